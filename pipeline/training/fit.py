"""Fit the U-Net on the split cache, log into the step's MLflow run, keep resumable checkpoints."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import mlflow
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from mlflow.tracking import MlflowClient

from pipeline.data.cache import open_split
from pipeline.data.datamodule import PersonDataModule
from pipeline.errors import PipelineError
from pipeline.params import TrainParams
from pipeline.tracking.journal import NOTHING, Journal
from pipeline.tracking.lease import is_rank_zero
from pipeline.training.callbacks import EpochSummary, EpochTimer, PredictionGrid
from pipeline.training.journal_logger import LAST_CHECKPOINT, JournalLogger, ReleasingCheckpointIO
from pipeline.training.module import SegmentationModule
from pipeline.training.recipes import TrainingSettings

GRID_IMAGES = 8
GRADIENT_CLIP = 1.0
EARLY_STOP_MIN_DELTA = 1e-4
JOURNAL_FOLDER = "journal"


@dataclass(frozen=True)
class Hardware:
    accelerator: str
    devices: int | str | list[int]
    precision: str
    num_workers: int
    on_gpu: bool


def resolve_hardware(params: TrainParams) -> Hardware:
    """Turn the `auto` settings into what this machine supports, so the run records real values."""
    on_gpu = torch.cuda.is_available() and params.accelerator in ("auto", "gpu", "cuda")
    precision = params.precision
    if precision == "auto":
        if on_gpu:
            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            precision = "32-true"
    devices: int | str | list[int] = params.devices
    if params.devices.isdigit():
        devices = int(params.devices)
    elif "," in params.devices:
        devices = [int(device) for device in params.devices.split(",") if device.strip()]
    workers = params.num_workers
    if workers < 0:
        # Reading a memory map is cheap; on a CPU, workers would only steal the cores training uses.
        workers = min(8, (torch.multiprocessing.cpu_count() or 2) // 2) if on_gpu else 0
    return Hardware(params.accelerator, devices, precision, workers, on_gpu)


def checkpoint_step(path: Path) -> int:
    """The training step a checkpoint was taken at (memory-mapped: only that field is read)."""
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)["global_step"]


def open_journal(checkpoint_dir: Path, run_id: str, last: Path) -> Journal | None:
    """The run's journal, opened by the first process only (ranks of a distributed fit log
    nothing), and wound back to the checkpoint the fit resumes from: what the last attempt
    logged after it is logged again from there."""
    if not is_rank_zero():
        return None
    journal = Journal(checkpoint_dir / JOURNAL_FOLDER, run_id, MlflowClient())
    journal.rewind(checkpoint_step(last) if last.is_file() else NOTHING)
    return journal


def fit(
    params: TrainParams, settings: TrainingSettings, cache: Path, run_id: str
) -> tuple[SegmentationModule, dict]:
    """Train as `settings` say and return the best module by val Dice with a summary of the fit.

    Checkpoints live in checkpoint_dir/<run_id>; a run started again with the same id resumes
    from its last epoch instead of starting over.
    """
    L.seed_everything(params.seed, workers=True)
    hardware = resolve_hardware(params)
    # Tags, not params: a run resumed on another machine may resolve them differently.
    mlflow.set_tags(
        {
            "unet_person.precision": hardware.precision,
            "unet_person.num_workers": hardware.num_workers,
            "unet_person.device": torch.cuda.get_device_name() if hardware.on_gpu else "cpu",
        }
    )
    datamodule = PersonDataModule(
        cache, settings.batch_size, hardware.num_workers, hardware.on_gpu, settings.augment
    )
    module = SegmentationModule(**settings.module_options())
    checkpoint_dir = Path(params.checkpoint_dir).expanduser().resolve() / run_id
    best_checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best",
        monitor="val_dice",
        mode="max",
        enable_version_counter=False,
    )
    # Every epoch, not only when val Dice improves (what save_last=True does since Lightning
    # 2.6): a resumed run must go on from where it stopped, not from its best epoch.
    last_checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=Path(LAST_CHECKPOINT).stem,
        save_top_k=1,
        enable_version_counter=False,
    )
    val_images, val_masks = open_split(cache, "val")
    interactive = sys.stderr.isatty()
    callbacks = [
        best_checkpoint,
        last_checkpoint,
        EarlyStopping(
            monitor="val_dice",
            mode="max",
            patience=settings.patience,
            min_delta=EARLY_STOP_MIN_DELTA,
        ),
        LearningRateMonitor(logging_interval="epoch"),
        EpochTimer(),
        PredictionGrid(
            np.array(val_images[:GRID_IMAGES]), np.array(val_masks[:GRID_IMAGES]), params.grid_every
        ),
        *([] if interactive else [EpochSummary()]),
    ]
    train_images = len(open_split(cache, "train")[0])
    last = checkpoint_dir / LAST_CHECKPOINT
    journal = open_journal(checkpoint_dir, run_id, last)
    trainer = L.Trainer(
        max_epochs=settings.max_epochs,
        max_time=params.max_time or None,
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        precision=hardware.precision,
        gradient_clip_val=GRADIENT_CLIP,
        callbacks=callbacks,
        logger=JournalLogger(journal),
        plugins=[ReleasingCheckpointIO(journal)],
        enable_progress_bar=interactive,
        log_every_n_steps=max(1, min(50, train_images // settings.batch_size)),
        default_root_dir=checkpoint_dir,
    )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=last if last.is_file() else None)
    except BaseException as failure:
        if journal:
            journal.close(drain=False)  # what is not delivered waits on disk for the resumed run
        if isinstance(failure, SIGTERMException):
            raise PipelineError(
                f"training was stopped (SIGTERM) in epoch {trainer.current_epoch}; checkpoints "
                f"are kept in {checkpoint_dir}, and `main` resumes this run from there"
            ) from failure
        raise
    if journal:
        journal.close(drain=True)
    if not best_checkpoint.best_model_path:
        raise PipelineError(
            "training ended before its first validation, so there is no model: raise max_epochs "
            "or max_time"
        )
    best = SegmentationModule.load_from_checkpoint(
        best_checkpoint.best_model_path, map_location="cpu"
    )
    summary = {
        "best_val_dice": float(best_checkpoint.best_model_score),
        "epochs_trained": trainer.current_epoch,
        "stopped_early": bool(trainer.early_stopping_callback.stopped_epoch),
        "parameters": sum(parameter.numel() for parameter in best.net.parameters()),
    }
    return best, summary
