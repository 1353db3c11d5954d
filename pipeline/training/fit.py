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
from pipeline.params import TrainParams, compile_options, resolve_switch
from pipeline.tracking.journal import NOTHING, Journal
from pipeline.tracking.lease import is_rank_zero
from pipeline.training.callbacks import EpochSummary, EpochTimer, PredictionGrid, StopTogether
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
    channels_last: bool
    compile: dict[str, str] | None  # torch.compile's arguments; None runs eagerly
    cudnn_benchmark: bool


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
        # Reading a memory map is cheap; on a CPU, workers would only steal the cores training
        # uses. On GPUs, each process of the node gets its share of half the cores.
        processes = _processes_per_node(devices) if on_gpu else 1
        cores = torch.multiprocessing.cpu_count() or 2
        workers = max(1, min(8, cores // (2 * processes))) if on_gpu else 0
    return Hardware(
        accelerator=params.accelerator,
        devices=devices,
        precision=precision,
        num_workers=workers,
        on_gpu=on_gpu,
        # Both pay off on CUDA (tensor cores want NHWC; the image size never changes).
        channels_last=resolve_switch("channels_last", params.channels_last, auto=on_gpu),
        compile=compile_options(params.compile),
        cudnn_benchmark=resolve_switch("cudnn_benchmark", params.cudnn_benchmark, auto=on_gpu),
    )


def _processes_per_node(devices: int | str | list[int]) -> int:
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    return max(1, torch.cuda.device_count())  # auto and -1: every GPU


def compile_tag(options: dict[str, str] | None) -> str:
    """The `compile` setting as the run records it: false, or backend:mode."""
    if options is None:
        return "false"
    return ":".join(options.values())


def checkpoint_root(params: TrainParams) -> Path:
    """The folder of every run's checkpoints, each in a subfolder named by its run id."""
    return Path(params.checkpoint_dir).expanduser().resolve()


def checkpoint_step(path: Path) -> int:
    """The training step a checkpoint was taken at (memory-mapped: only that field is read)."""
    return torch.load(path, map_location="cpu", weights_only=False, mmap=True)["global_step"]


def open_journal(checkpoint_dir: Path, run_id: str, last: Path) -> Journal:
    """The run's journal, wound back to the checkpoint the fit resumes from: what the last
    attempt logged after it is logged again from there."""
    journal = Journal(checkpoint_dir / JOURNAL_FOLDER, run_id, MlflowClient())
    journal.rewind(checkpoint_step(last) if last.is_file() else NOTHING)
    return journal


def fit(
    params: TrainParams, settings: TrainingSettings, cache: Path, run_id: str
) -> tuple[SegmentationModule, dict] | None:
    """Train as `settings` say and return the best module by val Dice with a summary of the fit.

    Checkpoints live in checkpoint_dir/<run_id>; a run started again with the same id resumes
    from its last epoch instead of starting over. In a distributed fit every rank calls this;
    only the first records into the run and returns the result, the others return None.
    """
    L.seed_everything(params.seed, workers=True)
    hardware = resolve_hardware(params)
    datamodule = PersonDataModule(
        cache,
        settings.batch_size,
        hardware.num_workers,
        hardware.on_gpu,
        settings.augment,
        hardware.channels_last,
    )
    module = SegmentationModule(**settings.module_options())
    if hardware.channels_last:
        module.net.to(memory_format=torch.channels_last)
    if hardware.compile is not None:
        # In place: the parameters keep their names, so checkpoints and the logged network (a
        # fresh UNet loaded from the best checkpoint) are those of the plain module.
        module.net.compile(**hardware.compile)
    checkpoint_dir = checkpoint_root(params) / run_id
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
        StopTogether(),
        PredictionGrid(
            np.array(val_images[:GRID_IMAGES]), np.array(val_masks[:GRID_IMAGES]), params.grid_every
        ),
        *([] if interactive else [EpochSummary()]),
    ]
    train_images = len(open_split(cache, "train")[0])
    last = checkpoint_dir / LAST_CHECKPOINT
    first = is_rank_zero()  # the other ranks of a distributed fit record nothing
    journal = open_journal(checkpoint_dir, run_id, last) if first else None
    trainer = L.Trainer(
        max_epochs=settings.max_epochs,
        max_time=params.max_time or None,
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        num_nodes=params.num_nodes,
        strategy=params.strategy,
        precision=hardware.precision,
        benchmark=hardware.cudnn_benchmark,
        gradient_clip_val=GRADIENT_CLIP,
        callbacks=callbacks,
        logger=JournalLogger(journal),
        plugins=[ReleasingCheckpointIO(journal)],
        enable_progress_bar=interactive,
        default_root_dir=checkpoint_dir,
    )
    # Each process takes its share of the training images: about once an epoch at least.
    per_process = train_images // (settings.batch_size * trainer.world_size)
    trainer.log_every_n_steps = max(1, min(50, per_process))
    if first:
        # Tags, not params: a run resumed on another machine may resolve them differently.
        mlflow.set_tags(
            {
                "unet_person.precision": hardware.precision,
                "unet_person.num_workers": hardware.num_workers,
                "unet_person.device": torch.cuda.get_device_name() if hardware.on_gpu else "cpu",
                "unet_person.channels_last": str(hardware.channels_last).lower(),
                "unet_person.compile": compile_tag(hardware.compile),
                "unet_person.cudnn_benchmark": str(hardware.cudnn_benchmark).lower(),
                "unet_person.strategy": type(trainer.strategy).__name__,
                "unet_person.world_size": trainer.world_size,
                "unet_person.global_batch": settings.batch_size * trainer.world_size,
            }
        )
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=last if last.is_file() else None)
    except BaseException as failure:
        if journal:
            journal.close(drain=False)  # what is not delivered waits on disk for the resumed run
        if isinstance(failure, SIGTERMException):
            if not first:
                # The first rank reports the stop; an error code here would have Lightning's
                # launcher kill it before it could end its run.
                return None
            raise PipelineError(
                f"training was stopped (SIGTERM) in epoch {trainer.current_epoch}; checkpoints "
                f"are kept in {checkpoint_dir}, and `main` resumes this run from there"
            ) from failure
        raise
    if not first:
        return None
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
