"""The whole pipeline on a GPU: one `python -m pipeline main` on generated data at 256 px,
timed, with its runs' figures read back from MLflow (see EXPLANATION). Needs CUDA: without it,
says so and exits 1, writing nothing. benchmarks/gpu.sh runs it after `--gpu`.

    python -m benchmarks gpu_pipeline                 # synthetic:600, 256 px, 10 epochs
    python -m benchmarks gpu_pipeline --log main.log --max-epochs 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from benchmarks.gpu import require_cuda
from benchmarks.measure import load_average, mlflow_environment
from benchmarks.report import Headline, markdown_table
from pipeline.tracking.runs import DEFAULT_EXPERIMENT
from pipeline.tracking.tags import ENTRY_POINT_TAG, TAG_NAMESPACE

TITLE = "The pipeline's `main` on a GPU"
NEEDS_GPU = True
TARGET_TEXT = "report: wall time, epoch time, test Dice"
REPOSITORY = Path(__file__).resolve().parent.parent
TIMEOUT_S = 1800
EXPLANATION = """\
`python -m pipeline main --source synthetic:N --image_size 256 --max_epochs E --promote false`
(the `default` recipe, every other setting as train resolves it on the machine: precision,
workers, and whatever else the run's `unet_person.*` tags below record), on a fresh SQLite
store, timed from the command's start to its end: generating the photos, preprocessing,
training, logging the model and evaluating. The epoch time is train's `epoch_time_s` (an
epoch's training and validation), the median over the epochs after the first (which includes
cuDNN's and the compiler's warm-up, when on); images per second are the training split's
photos over it.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default="synthetic:600")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--log", type=Path, help="keep main's output here (default: discarded)")


def runs_by_entry_point(client: MlflowClient, experiment_id: str) -> dict:
    """The newest run of each step, by its entry point."""
    found = {}
    for run in client.search_runs([experiment_id], order_by=["attributes.start_time ASC"]):
        found[run.data.tags.get(ENTRY_POINT_TAG, "")] = run
    return found


def run(options: argparse.Namespace) -> dict:
    require_cuda()
    folder = options.workspace.folder / "main"
    folder.mkdir()
    env = mlflow_environment(f"sqlite:///{folder / 'mlflow.db'}")
    env["UNET_PERSON_CACHE"] = str(folder / "cache")
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.create_experiment(
        DEFAULT_EXPERIMENT, artifact_location=(folder / "mlruns").as_uri()
    )
    argv = [
        *(sys.executable, "-m", "pipeline", "main", "--source", options.source),
        *("--image_size", str(options.image_size), "--max_epochs", str(options.max_epochs)),
        *("--promote", "false", "--raw_dir", str(folder / "raw")),
        *("--processed_dir", str(folder / "processed")),
        *("--checkpoint_dir", str(folder / "checkpoints")),
    ]
    log = options.log or folder / "main.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    before = load_average()
    started = time.perf_counter()
    with log.open("w") as output:
        finished = subprocess.run(
            argv,
            env=env,
            cwd=REPOSITORY,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT_S,
            check=False,
        )
    wall = time.perf_counter() - started
    if finished.returncode:
        raise RuntimeError(f"main failed ({finished.returncode}):\n{log.read_text()[-3000:]}")
    steps = runs_by_entry_point(client, experiment)
    train, evaluate = steps["train"], steps["evaluate"]
    epochs = [m.value for m in client.get_metric_history(train.info.run_id, "epoch_time_s")]
    train_images = steps["preprocess"].data.metrics["train_images"]
    epoch = statistics.median(epochs[1:] or epochs)
    figures = {
        "command": " ".join(argv[1:]),
        "wall_s": round(wall, 1),
        "step_seconds": {
            name: round((run.info.end_time - run.info.start_time) / 1000, 1)
            for name, run in steps.items()
            if name and run.info.end_time
        },
        "epochs": len(epochs),
        "first_epoch_s": round(epochs[0], 2),
        "epoch_s": round(epoch, 3),
        "train_images": int(train_images),
        "epoch_images_per_s": round(train_images / epoch, 1),
        "best_val_dice": round(train.data.metrics.get("best_val_dice", float("nan")), 4),
        "test_dice": round(evaluate.data.metrics["test_dice"], 4),
        "train_tags": {
            key: value for key, value in train.data.tags.items() if key.startswith(TAG_NAMESPACE)
        },
        "load_average": {"before": before, "after": load_average()},
    }
    print(table(figures))
    return figures


def headline(figures: dict) -> Headline:
    return Headline(
        figures=(
            f"{figures['wall_s']:.0f} s in all; epoch {figures['epoch_s']:.2f} s "
            f"({figures['epoch_images_per_s']:.0f} img/s); test Dice {figures['test_dice']:.3f}"
        ),
        ratio_text="n/a",
        target=TARGET_TEXT,
        met=None,
    )


def table(figures: dict) -> str:
    steps = ", ".join(f"{name} {seconds} s" for name, seconds in figures["step_seconds"].items())
    tags = ", ".join(f"`{key}={value}`" for key, value in sorted(figures["train_tags"].items()))
    epoch = (
        f"{figures['epoch_s']} s: {figures['epoch_images_per_s']} img/s over "
        f"{figures['train_images']} training photos"
    )
    rows = [
        ["command", f"`python {figures['command']}`"],
        ["wall time", f"{figures['wall_s']} s"],
        ["steps", steps],
        ["epochs", f"{figures['epochs']} (first {figures['first_epoch_s']} s)"],
        ["median epoch", epoch],
        ["best val Dice / test Dice", f"{figures['best_val_dice']} / {figures['test_dice']}"],
        ["train run tags", tags],
    ]
    return markdown_table(["figure", "value"], rows, text_columns=2)


def section(results: dict[str, dict]) -> str:
    parts = [f"## {TITLE}\n\n{EXPLANATION}"]
    for machine, figures in sorted(results.items()):
        facts = figures["machine"]
        parts.append(
            f"### {facts.get('gpu', 'GPU')} ({facts['cpu']}, {facts['cores']} cores)\n\n"
            f"`{machine}`, {figures['date']}.\n\n{table(figures)}\n"
        )
    return "\n".join(parts)
