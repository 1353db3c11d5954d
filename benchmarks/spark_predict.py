"""What Spark costs and buys for batch prediction on this machine: photos per second of
`predict_spark` on `local[2]` against `predict` in one process over the same photos, Spark's
start per job, and the executors' peak memory for a small and a ten times larger library
(see EXPLANATION).

    python -m benchmarks spark_predict                   # 3 repeats over 200 photos, then 2000
    python -m benchmarks spark_predict --photos 100 --large 1000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import torch
from mlflow.tracking import MlflowClient

from benchmarks.measure import check_repeats, descendants, load_average, median
from benchmarks.report import machine_sections, markdown_table
from benchmarks.serving_memory import photo_jpeg
from pipeline.images import upright_photo
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.orchestration.project import project_dir
from pipeline.tracking.models import log_segmentation_model

TITLE = "Batch prediction on Spark: photos per second and executor memory"
NETWORK = {"base_channels": 16, "depth": 4}
IMAGE_SIZE = 128
PHOTO = (640, 480)
MB = 1e6
EXPLANATION = f"""\
The same library of generated 640x480 JPEG photos is masked by `predict` (one process) and by
`predict_spark --spark_master local[2]` (default `partition_photos` and `batch_photos`),
taking turns, each command in a fresh process with its own output folder, through one logged
U-Net ({NETWORK["base_channels"]} channels, depth {NETWORK["depth"]}, {IMAGE_SIZE} px, random
weights: its cost does not depend on what it learned). Photos per second divide the photos by
the whole command (Python, torch and MLflow imports, the model loaded, for Spark the JVM and the
model's UDF too) and, for Spark, by the job alone (`job_s`: listing, masks, table). Spark's start
is `spark_start_s`, the JVM and the UDF. Executor memory is the peak resident size of Spark's
Python workers (sampled every 0.1 s, the largest worker; in local mode they are the executors'
Python) and of the JVM, for the small library and for one ten times larger: it stays flat
because an executor holds one Arrow batch of photos at a time.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command (>= 3)")
    parser.add_argument("--photos", type=int, default=200, help="photos of the compared library")
    parser.add_argument("--large", type=int, default=2000, help="photos of the memory library")


def library(folder: Path, count: int) -> Path:
    """`count` photos: a few distinct JPEGs, repeated under their own names."""
    folder.mkdir(parents=True)
    distinct = [photo_jpeg(*PHOTO) for _ in range(min(count, 8))]
    for index in range(count):
        (folder / f"photo{index:05d}.jpg").write_bytes(distinct[index % len(distinct)])
    return folder


def logged_model(folder: Path) -> tuple[str, dict[str, str]]:
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    experiment = MlflowClient().create_experiment(
        "spark-benchmark", artifact_location=(folder / "mlruns").as_uri()
    )
    torch.manual_seed(0)
    net = UNet(NetworkConfig.from_dict(NETWORK))
    with mlflow.start_run(experiment_id=experiment):
        example = np.asarray(upright_photo(photo_jpeg(IMAGE_SIZE, IMAGE_SIZE)))
        uri = log_segmentation_model(net, IMAGE_SIZE, example, onnx=False).model_uri
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking,
        "MLFLOW_EXPERIMENT_ID": experiment,
        "PYTHONPATH": str(project_dir()),
    }
    return uri, env


class PeakMemory:
    """The peak resident size of a command's Spark Python workers and of its JVM, sampled."""

    def __init__(self, pid: int) -> None:
        self.pid, self.worker, self.jvm = pid, 0, 0
        self.running = True
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while self.running:
            for pid in descendants(self.pid):
                try:
                    child = psutil.Process(pid)
                    name, command, rss = child.name(), child.cmdline(), child.memory_info().rss
                except psutil.Error:  # ended meanwhile
                    continue
                if name == "java":
                    self.jvm = max(self.jvm, rss)
                elif name.startswith("python") and any("pyspark" in part for part in command):
                    self.worker = max(self.worker, rss)
            time.sleep(0.1)

    def stop(self) -> dict[str, float]:
        self.running = False
        self.thread.join()
        return {"worker_peak_mb": round(self.worker / MB), "jvm_peak_mb": round(self.jvm / MB)}


def command_once(env: dict, folder: Path, argv: list[str]) -> dict:
    """One command in a fresh process: its wall time, its run's metrics, Spark's memory."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *argv],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    memory = PeakMemory(process.pid)
    output, _ = process.communicate()
    wall = time.perf_counter() - started
    peaks = memory.stop()
    if process.returncode != 0:
        raise SystemExit(f"{argv[0]} failed:\n{output[-3000:]}")
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs(
        [env["MLFLOW_EXPERIMENT_ID"]], f"tags.mlflow.runName = '{argv[0]}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )  # fmt: skip
    return {"wall_s": round(wall, 2), **run.data.metrics, **peaks}


def run(options: argparse.Namespace) -> dict:
    check_repeats(options.repeats)
    before = load_average()
    folder = options.workspace.folder / "spark_predict"
    folder.mkdir(parents=True)
    model_uri, env = logged_model(folder)
    small = library(folder / "small", options.photos)
    spark = ["--spark_master", "local[2]"]
    commands = {
        "predict": lambda out: ["predict", "--input_dir", str(small), "--output_dir", out],
        "spark": lambda out: ["predict_spark", "--input", str(small), "--output", out, *spark],
    }
    measured: dict[str, list[dict]] = {name: [] for name in commands}
    for repeat in range(options.repeats):
        for name, argv in commands.items():
            out = str(folder / f"{name}-{repeat}")
            measured[name].append(command_once(env, folder, [*argv(out), "--model_uri", model_uri]))
    large = library(folder / "large", options.large)
    large_argv = ["predict_spark", "--input", str(large), "--output", str(folder / "large-out")]
    large_run = command_once(env, folder, [*large_argv, *spark, "--model_uri", model_uri])
    photos = options.photos
    figures = {
        "repeats": options.repeats,
        "photos": photos,
        "large_photos": options.large,
        "network": NETWORK,
        "image_size": IMAGE_SIZE,
        "load_average": {"before": before, "after": load_average()},
        "predict_photos_per_s": median([photos / m["wall_s"] for m in measured["predict"]], 2),
        "spark_photos_per_s": median([photos / m["wall_s"] for m in measured["spark"]], 2),
        "spark_job_photos_per_s": median([m["photos_per_s"] for m in measured["spark"]], 2),
        "spark_start_s": median([m["spark_start_s"] for m in measured["spark"]], 1),
        "worker_peak_mb": median([m["worker_peak_mb"] for m in measured["spark"]], 0),
        "jvm_peak_mb": median([m["jvm_peak_mb"] for m in measured["spark"]], 0),
        "large_worker_peak_mb": large_run["worker_peak_mb"],
        "large_jvm_peak_mb": large_run["jvm_peak_mb"],
        "large_job_photos_per_s": round(large_run["photos_per_s"], 2),
        "runs": measured,
    }
    print(table(figures))
    return figures


def table(figures: dict) -> str:
    predict = figures["predict_photos_per_s"]
    header = ["command", "photos", "photos/s, whole command", "vs predict", "photos/s, job only",
              "Spark start", "Python worker peak", "JVM peak"]  # fmt: skip
    rows = [
        ["predict", figures["photos"], f"{predict:.1f}", "1.00", "", "", "", ""],
        [
            "predict_spark local[2]",
            figures["photos"],
            f"{figures['spark_photos_per_s']:.1f}",
            f"{figures['spark_photos_per_s'] / predict:.2f}",
            f"{figures['spark_job_photos_per_s']:.1f}",
            f"{figures['spark_start_s']:.1f} s",
            f"{figures['worker_peak_mb']:.0f} MB",
            f"{figures['jvm_peak_mb']:.0f} MB",
        ],
        [
            "predict_spark local[2]",
            figures["large_photos"],
            "",
            "",
            f"{figures['large_job_photos_per_s']:.1f}",
            "",
            f"{figures['large_worker_peak_mb']:.0f} MB",
            f"{figures['large_jvm_peak_mb']:.0f} MB",
        ],
    ]
    return markdown_table(header, rows, text_columns=1)


def section(results: dict[str, dict]) -> str:
    def details(figures: dict) -> str:
        return (
            f"{figures['repeats']} runs of each command over {figures['photos']} photos (medians), "
            f"then one Spark run over {figures['large_photos']}.\n\n{table(figures)}"
        )

    return machine_sections(TITLE, EXPLANATION, results, details)
