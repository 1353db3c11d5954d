"""Epoch time of a short fit with the pipeline's MLflow logging to a real tracking server vs the
same fit with logging off (see EXPLANATION).

    python -m benchmarks tracking_overhead                # 480 photos, 6 epochs, 5 repeats
    python -m benchmarks tracking_overhead --epochs 4 --repeats 3
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import subprocess
import time
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from mlflow.tracking import MlflowClient
from PIL import Image

from benchmarks.measure import (
    check_repeats,
    cpu_seconds,
    descendants,
    load_average,
    median,
    tracking_server,
)
from benchmarks.report import Headline, machine_sections, markdown_table
from pipeline.data.cache import open_split
from pipeline.data.datamodule import PersonDataModule
from pipeline.model.unet import UNet
from pipeline.settings import with_settings
from pipeline.tracking.journal import NOTHING, Journal
from pipeline.training.callbacks import EpochTimer, PredictionGrid
from pipeline.training.checkpoints import LAST_CHECKPOINT, DurableCheckpointIO
from pipeline.training.fit import EARLY_STOP_MIN_DELTA, GRID_IMAGES, JOURNAL_FOLDER
from pipeline.training.journal_logger import JournalLogger
from pipeline.training.module import SegmentationModule
from pipeline.training.recipes import DEFAULT
from pipeline.training_params import TrainingParams

TITLE = "Tracking overhead: MLflow logging on vs off"
TARGET = 3.0
TARGET_TEXT = "<= 3 %"
MODES = ("on", "off")
GRID_EVERY = TrainingParams.grid_every
EXPLANATION = f"""\
The same fit twice over: once with what `pipeline/training/fit.py` adds for MLflow (its
`JournalLogger` and `DurableCheckpointIO` around the run's journal, which a background thread
delivers to a real `mlflow server` this benchmark starts on 127.0.0.1 with one worker and a
SQLite store; `LearningRateMonitor`, `EpochTimer`, and the `PredictionGrid` of validation
images every {GRID_EVERY} epochs and at the last), once with none of it (`logger=False`). Both
keep everything else of fit.py's Trainer: checkpoints every epoch, early stopping, gradient
clipping, validation every epoch. The network is the `default` recipe's at a small width on
small photos, without augmentation, so that an epoch lasts about as long as one of the real
dataset's at 256 px on an H100-class GPU (a second or two).

An epoch's time runs from its start to the next epoch's start (the last: to the end of the
fit), so it holds validation, checkpoints, the grid and whatever the logger does at the epoch's
end. Each fit's first epoch is left out (warm-up); a fit has {GRID_EVERY + 1} epochs, so that
one timed epoch in {GRID_EVERY} draws a grid, as in a long run. The headline is the median
epoch of each mode over all repeats, which leaves the grid epochs out; the mean, which counts
them as often as they occur, is given beside it. Fits with and without logging take turns (on,
off, then off, on), so passing load falls on both. The server runs on the same cores as the
training, as on a laptop, and is warmed up first by one run of the journal's calls (a fresh
server spends seconds of CPU on its first requests). The CPU seconds each fit cost this process
and the server, per epoch, say what the logging costs whatever the load.
"""


class EpochClock(L.Callback):
    """Each epoch's wall time, from its start to the next epoch's start or the fit's end."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.end = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.end = time.perf_counter()

    def seconds(self) -> list[float]:
        marks = [*self.starts, self.end]
        return [later - earlier for earlier, later in itertools.pairwise(marks)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=480, help="generated photos (70%% train)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16, help="the U-Net's base channels")
    parser.add_argument(
        "--epochs", type=int, default=GRID_EVERY + 1, help="per fit, the first not timed"
    )
    parser.add_argument("--repeats", type=int, default=5, help="fits per mode (>= 3)")


def one_fit(
    options: argparse.Namespace, cache: Path, folder: Path, journal: Journal | None
) -> list[float]:
    """Epoch times of one fit as fit.py runs it, with the MLflow side only given a `journal`."""
    settings = with_settings(
        DEFAULT, {"base_channels": options.width, "augment": "none", "max_epochs": options.epochs}
    )
    clock = EpochClock()
    callbacks = [
        ModelCheckpoint(
            dirpath=folder,
            filename="best",
            monitor="val_dice",
            mode="max",
            enable_version_counter=False,
        ),
        ModelCheckpoint(
            dirpath=folder,
            filename=Path(LAST_CHECKPOINT).stem,
            save_top_k=1,
            enable_version_counter=False,
        ),
        EarlyStopping(
            monitor="val_dice",
            mode="max",
            patience=settings.patience,
            min_delta=EARLY_STOP_MIN_DELTA,
        ),
        clock,
    ]
    logging_parts = {"logger": False, "plugins": None}
    if journal is not None:
        val_images, val_masks = open_split(cache, "val")
        grid = PredictionGrid(
            np.array(val_images[:GRID_IMAGES]), np.array(val_masks[:GRID_IMAGES]), GRID_EVERY
        )
        callbacks += [LearningRateMonitor(logging_interval="epoch"), EpochTimer(), grid]
        logging_parts = {
            "logger": JournalLogger(journal),
            "plugins": [DurableCheckpointIO(journal)],
        }
    train_images = len(open_split(cache, "train")[0])
    trainer = L.Trainer(
        max_epochs=settings.max_epochs,
        accelerator="cpu",
        devices=1,
        precision="32-true",
        **DEFAULT.optimization.trainer_arguments(),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, train_images // settings.batch_size)),
        default_root_dir=folder,
        **logging_parts,
    )
    L.seed_everything(42, verbose=False)
    module = SegmentationModule(UNet(settings.network), settings.loss, settings.optimization)
    datamodule = PersonDataModule(cache, settings.batch_size, 0, False, settings.augment)
    trainer.fit(module, datamodule=datamodule)
    return clock.seconds()[1:]


def warm_up(client: MlflowClient, experiment: str, folder: Path) -> None:
    """The journal's calls once into a throwaway run: a fresh server spends seconds of CPU on
    its first requests (imports, its artifact store), which a running server has behind it."""
    journal = Journal(folder, client.create_run(experiment).info.run_id, client)
    journal.record_metrics({"warm_up": 1.0}, 0)
    journal.record_image("warm_up", Image.new("RGB", (64, 64)), 0, 0)
    journal.close(drain=True)


def measured_fit(
    options: argparse.Namespace,
    cache: Path,
    folder: Path,
    logging_to: tuple[MlflowClient, str, subprocess.Popen] | None,
) -> dict:
    """One fit's timed epochs and the CPU seconds this process and the server spent on it;
    `logging_to` is (client, experiment, server process), or None for logging off."""
    process_cpu = time.process_time()
    if logging_to is None:
        return {
            "epochs": one_fit(options, cache, folder, None),
            "cpu_s": time.process_time() - process_cpu,
            "server_cpu_s": 0.0,
        }
    client, experiment, server_process = logging_to
    server = [server_process.pid, *descendants(server_process.pid)]
    server_cpu = sum(cpu_seconds(pid) for pid in server)
    run_id = client.create_run(experiment).info.run_id
    journal = Journal(folder / JOURNAL_FOLDER, run_id, client)
    journal.rewind(NOTHING)  # as fit.py's open_journal does for a new run
    epochs = one_fit(options, cache, folder, journal)
    journal.close(drain=True)  # after the epochs: delivers what is left, outside their times
    client.set_terminated(run_id)
    return {
        "epochs": epochs,
        "cpu_s": time.process_time() - process_cpu,
        "server_cpu_s": sum(cpu_seconds(pid) for pid in server) - server_cpu,
    }


def run(options: argparse.Namespace) -> dict:
    check_repeats(options.repeats)
    if options.epochs < 2:
        raise SystemExit("--epochs must be at least 2: the first epoch is not timed")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    cache = options.workspace.cache(options.images, options.image_size)
    folder = options.workspace.folder / "tracking-overhead"
    folder.mkdir()
    fits: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tracking_server(folder) as (url, server_process):
        client = MlflowClient(tracking_uri=url)
        experiment = client.create_experiment("tracking-overhead")
        warm_up(client, experiment, folder / "warm-up")
        before = load_average()
        for repeat in range(options.repeats):
            for mode in MODES if repeat % 2 == 0 else reversed(MODES):
                logging_to = (client, experiment, server_process) if mode == "on" else None
                fit = measured_fit(options, cache, folder / f"{mode}-{repeat}", logging_to)
                fits[mode].append(fit)
    every = {mode: [s for fit in runs for s in fit["epochs"]] for mode, runs in fits.items()}
    on, off = median(every["on"], 3), median(every["off"], 3)
    mean_on, mean_off = statistics.fmean(every["on"]), statistics.fmean(every["off"])
    overhead = round((on - off) / off * 100, 2)
    figures = {
        "overhead_pct": overhead,
        "target": TARGET,
        "met": overhead <= TARGET,
        "epoch_s": {"on": on, "off": off},
        "overhead_pct_of_means": round((mean_on - mean_off) / mean_off * 100, 2),
        "epoch_s_mean": {"on": round(mean_on, 3), "off": round(mean_off, 3)},
        # CPU seconds a fit's epoch cost, medians over the fits (all its epochs, set-up too).
        "cpu_s_per_epoch": {
            mode: median([fit["cpu_s"] / options.epochs for fit in runs], 3)
            for mode, runs in fits.items()
        },
        "server_cpu_s_per_epoch": median(
            [fit["server_cpu_s"] / options.epochs for fit in fits["on"]], 3
        ),
        "images": options.images,
        "train_images": len(open_split(cache, "train")[0]),
        "image_size": options.image_size,
        "width": options.width,
        "batch_size": DEFAULT.batch_size,
        "epochs_per_fit": options.epochs,
        "repeats": options.repeats,
        "epoch_seconds": {
            mode: [[round(seconds, 3) for seconds in fit["epochs"]] for fit in runs]
            for mode, runs in fits.items()
        },
        "load_average": {"before": before, "after": load_average()},
    }
    print(table(figures))
    return figures


def headline(figures: dict) -> Headline:
    epoch = figures["epoch_s"]
    return Headline(
        figures=f"epoch {epoch['on']:.3f} s logging vs {epoch['off']:.3f} s off",
        ratio_text=f"{figures['overhead_pct']:+.1f} %",
        target=TARGET_TEXT,
        met=figures["met"],
    )


def table(figures: dict) -> str:
    median_s, mean_s, cpu = figures["epoch_s"], figures["epoch_s_mean"], figures["cpu_s_per_epoch"]
    rows = [
        [
            "median time",
            f"{median_s['on']:.3f} s",
            f"{median_s['off']:.3f} s",
            f"{figures['overhead_pct']:+.2f} %",
        ],
        [
            "mean time",
            f"{mean_s['on']:.3f} s",
            f"{mean_s['off']:.3f} s",
            f"{figures['overhead_pct_of_means']:+.2f} %",
        ],
        [
            "CPU, training process",
            f"{cpu['on']:.3f} s",
            f"{cpu['off']:.3f} s",
            f"{(cpu['on'] - cpu['off']) * 1000:+.0f} ms",
        ],
        ["CPU, tracking server", f"{figures['server_cpu_s_per_epoch']:.3f} s", "", ""],
    ]
    return markdown_table(["per epoch", "logging on", "logging off", "overhead"], rows)


def section(results: dict[str, dict]) -> str:
    return machine_sections(
        TITLE,
        EXPLANATION,
        results,
        lambda figures: (
            f"{figures['train_images']} training photos at {figures['image_size']} px, width "
            f"{figures['width']}, batch {figures['batch_size']}; {figures['repeats']} fits per "
            f"mode of {figures['epochs_per_fit']} epochs ({figures['epochs_per_fit'] - 1} timed "
            f"each).\n\n{table(figures)}"
        ),
    )
