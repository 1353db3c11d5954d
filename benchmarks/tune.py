"""What a `tune` study buys per hour on this machine: trials per hour with 1 and with 2 workers,
and the share of a trial spent outside training (see EXPLANATION).

    python -m benchmarks tune                        # 3 repeats of 4 trials each
    python -m benchmarks tune --repeats 5 --n_trials 6
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from benchmarks.measure import check_repeats, load_average, median
from benchmarks.report import machine_sections, markdown_table
from pipeline.orchestration.project import project_dir

TITLE = "Tune: trials per hour with 1 and 2 workers"
WORKERS = (1, 2)
SETTINGS = {
    "source": "synthetic:48",
    "image_size": "64",
    "base_channels": "8",
    "depth": "2",
    "max_epochs": "3",
    "batch_size": "8",
    "num_workers": "0",
    "log_data": "false",
    "onnx": "false",
    "search_space": "lr,loss",  # neither changes a trial's cost, unlike the width
    "pruner": "none",  # every trial trains every epoch: the figures compare like with like
    "promote": "false",
    "reuse": "false",
}
EXPLANATION = """\
Each repeat runs the same study of `n_trials` tiny trials (48 generated photos at 64 px, a
U-Net of 8 channels and depth 2, 3 epochs, no pruning, lr and loss searched: neither changes a
trial's cost) once with `--workers 1` and once with `--workers 2`, taking turns, each in a fresh
folder with its own SQLite tracking store and journal. Trials per hour count the study's trials
from the first one's start to the last one's end (not the data preparation before them nor the
evaluation after). Outside training is each trial's time (Optuna's start to complete) less its
train run's epochs (`epoch_time_s`): the train process starting (Python, torch, Lightning,
MLflow imports), the data loading, the study's storage, MLflow logging and the model logged at
the end; its share is the median over the trials. Two workers share 2 cores, so they cannot
double the rate: what they win is the time one trial leaves the cores idle (process start,
logging, waiting on the store).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="studies per worker count (>= 3)")
    parser.add_argument("--n_trials", type=int, default=4, help="trials per study")


def tune_once(folder: Path, workers: int, n_trials: int) -> dict:
    """One study in a fresh `folder`: its trials' rate and what they spent outside training."""
    import optuna

    from pipeline.search.study import default_storage
    from pipeline.training.pruning import open_storage

    folder.mkdir(parents=True)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "UNET_PERSON_CACHE": str(folder / "cache"),
        "PYTHONPATH": str(project_dir()),
    }
    params = {
        **SETTINGS,
        "n_trials": str(n_trials),
        "workers": str(workers),
        "raw_dir": str(folder / "raw"),
        "processed_dir": str(folder / "processed"),
        "checkpoint_dir": str(folder / "checkpoints"),
        "output_dir": str(folder / "tune"),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "tune", *(f"--{k}={v}" for k, v in params.items())],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"tune failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    storage = open_storage(default_storage(params["output_dir"]))
    study = optuna.load_study(study_name="unet-person", storage=storage)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    outside = []
    for trial in trials:
        span = (trial.datetime_complete - trial.datetime_start).total_seconds()
        history = client.get_metric_history(trial.user_attrs["run_id"], "epoch_time_s")
        outside.append((span - sum(metric.value for metric in history)) / span)
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    return {
        "trials": len(trials),
        "trials_per_hour": len(trials) * 3600 / (last - first).total_seconds(),
        "outside_training_share": median(outside, 3),
        "wall_s": round(wall, 1),
    }


def run(options: argparse.Namespace) -> dict:
    check_repeats(options.repeats)
    before = load_average()
    studies: dict[int, list[dict]] = {workers: [] for workers in WORKERS}
    for repeat in range(options.repeats):
        for workers in WORKERS:
            folder = options.workspace.folder / f"tune-{workers}-{repeat}"
            studies[workers].append(tune_once(folder, workers, options.n_trials))
    by_workers = {
        str(workers): {
            "studies": measured,
            "trials_per_hour": median([study["trials_per_hour"] for study in measured], 1),
            "outside_training_share": median(
                [study["outside_training_share"] for study in measured], 3
            ),
            "wall_s": median([study["wall_s"] for study in measured], 1),
        }
        for workers, measured in studies.items()
    }
    figures = {
        "repeats": options.repeats,
        "n_trials": options.n_trials,
        "settings": SETTINGS,
        "load_average": {"before": before, "after": load_average()},
        "by_workers": by_workers,
    }
    print(table(figures))
    return figures


def table(figures: dict) -> str:
    one = figures["by_workers"]["1"]["trials_per_hour"]
    header = [
        "workers", "trials per hour", "vs 1 worker", "outside training, share of a trial",
        "whole command",
    ]  # fmt: skip
    rows = [
        [
            workers,
            f"{measured['trials_per_hour']:.0f}",
            f"{measured['trials_per_hour'] / one:.2f}",
            f"{measured['outside_training_share']:.0%}",
            f"{measured['wall_s']:.0f} s",
        ]
        for workers, measured in figures["by_workers"].items()
    ]
    return markdown_table(header, rows, text_columns=0)


def section(results: dict[str, dict]) -> str:
    def details(figures: dict) -> str:
        return (
            f"{figures['repeats']} studies of {figures['n_trials']} trials per worker count, "
            f"each figure their median.\n\n{table(figures)}"
        )

    return machine_sections(TITLE, EXPLANATION, results, details)
