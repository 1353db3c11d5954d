"""Fit the U-Net on the split cache, log into the step's MLflow run, keep resumable checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import mlflow
import numpy as np
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
)
from lightning.pytorch.utilities.exceptions import SIGTERMException
from mlflow.tracking import MlflowClient

from pipeline.console import log
from pipeline.data.cache import Processed, is_shards, open_split
from pipeline.data.datamodule import PersonDataModule
from pipeline.errors import PipelineError
from pipeline.model.unet import UNet
from pipeline.processes import is_rank_zero
from pipeline.tracking.journal import Journal
from pipeline.tracking.tags import (
    CHANNELS_LAST_TAG,
    CHECKPOINT_SET_ASIDE_TAG,
    COMPILE_TAG,
    CUDNN_BENCHMARK_TAG,
    DEVICE_TAG,
    GLOBAL_BATCH_TAG,
    NUM_WORKERS_TAG,
    PRECISION_TAG,
    STRATEGY_TAG,
    WORLD_SIZE_TAG,
)
from pipeline.training.callbacks import (
    EpochSummary,
    EpochTimer,
    PredictionGrid,
    StopTogether,
    WeightEMA,
)
from pipeline.training.checkpoints import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    BestCheckpoint,
    DurableCheckpointIO,
    ResumePoint,
    StepCheckpoint,
    resume_point,
)
from pipeline.training.journal_logger import JournalLogger
from pipeline.training.module import SegmentationModule
from pipeline.training.pruning import TrialLink, TrialPruned, TrialPruning
from pipeline.training.recipes import Recipe
from pipeline.training.runtime import Hardware, RuntimeConfig, compile_tag, resolve_hardware

GRID_IMAGES = 8
EARLY_STOP_MIN_DELTA = 1e-4
JOURNAL_FOLDER = "journal"


def checkpoint_root(runtime: RuntimeConfig) -> Path:
    """The folder of every run's checkpoints, each in a subfolder named by its run id."""
    return Path(runtime.checkpoint_dir).expanduser().resolve()


def open_journal(checkpoint_dir: Path, run_id: str, resume: ResumePoint) -> Journal:
    """The run's journal, wound back to the checkpoint the fit resumes from: what the last
    attempt logged after it is logged again from there."""
    journal = Journal(checkpoint_dir / JOURNAL_FOLDER, run_id, MlflowClient())
    journal.rewind(resume.step)
    return journal


class FitResult(NamedTuple):
    """What the first process of a fit returns: the best module by val Dice, and the fit's
    summary metrics."""

    best: SegmentationModule
    summary: dict[str, Any]


def fit(
    recipe: Recipe,
    runtime: RuntimeConfig,
    cache: Processed,
    run_id: str,
    seed: int,
    grid_every: int,
) -> FitResult | None:
    """Train as `recipe` says; `seed` seeds weights and data order, `grid_every` spaces the
    prediction grids (epochs).

    Checkpoints live in checkpoint_dir/<run_id>; a run started again with the same id resumes
    from its last epoch instead of starting over. In a distributed fit every rank calls this;
    only the first records into the run and returns the result, the others return None.
    """
    L.seed_everything(seed, workers=True)
    hardware = resolve_hardware(runtime)
    datamodule = PersonDataModule(
        cache,
        recipe.batch_size,
        hardware.num_workers,
        hardware.on_gpu,
        recipe.augment,
        hardware.channels_last,
        seed,
        runtime.cache_size,
    )
    checkpoint_dir = checkpoint_root(runtime) / run_id
    first = is_rank_zero()  # the other ranks of a distributed fit record nothing
    resume = resume_point(checkpoint_dir, set_aside=first)
    if first and resume.set_aside:
        log.warning("train: %s", resume.description())
        mlflow.set_tag(CHECKPOINT_SET_ASIDE_TAG, resume.description()[:5000])
    module = segmentation_module(recipe, hardware, fresh=resume.checkpoint is None)
    if first:
        size = sum(parameter.numel() for parameter in module.net.parameters())
        log.info("train: a U-Net of %s parameters", f"{size:,}")
    trial = TrialLink.from_environment()
    # A tune trial's epochs are lines, never a live bar: its workers share one terminal.
    interactive = sys.stderr.isatty() and trial is None
    best_checkpoint = BestCheckpoint(
        dirpath=checkpoint_dir,
        filename=Path(BEST_CHECKPOINT).stem,
        monitor="val_dice",
        mode="max",
        enable_version_counter=False,
    )
    # Arrays' loader would draw a new order on a mid-epoch resume: some images twice.
    checkpoint_every = runtime.checkpoint_every if is_shards(cache) else 0
    callbacks = fit_callbacks(
        recipe,
        cache,
        grid_every,
        checkpoint_dir,
        checkpoint_every,
        best_checkpoint,
        trial,
        interactive,
    )
    journal = open_journal(checkpoint_dir, run_id, resume) if first else None
    trainer = fit_trainer(
        recipe, runtime, hardware, callbacks, journal, checkpoint_dir, interactive
    )
    # Each process takes its share of the training images: about once an epoch at least.
    per_process = len(open_split(cache, "train")[0]) // (recipe.batch_size * trainer.world_size)
    trainer.log_every_n_steps = max(1, min(50, per_process))
    if first:
        # Tags, not params: a run resumed on another machine may resolve them differently.
        mlflow.set_tags(hardware_tags(hardware, trainer, recipe.batch_size))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.checkpoint)
    except BaseException as failure:
        if journal:
            # A pruned trial is over: its metrics go out now. Otherwise what is not delivered
            # waits on disk for the resumed run.
            journal.close(drain=isinstance(failure, TrialPruned))
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
    return fit_result(trainer, best_checkpoint)


def segmentation_module(recipe: Recipe, hardware: Hardware, fresh: bool) -> SegmentationModule:
    """The module to fit, laid out and compiled for the hardware. A pretrained encoder's
    weights start a fresh fit; a resumed one takes all from its checkpoint, so it downloads
    nothing."""
    module = SegmentationModule(
        UNet(recipe.network, pretrained=fresh), recipe.loss, recipe.optimization
    )
    if hardware.channels_last:
        module.net.to(memory_format=torch.channels_last)
    if hardware.compile is not None:
        # In place: the parameters keep their names, so checkpoints and the logged network (a
        # fresh UNet loaded from the best checkpoint) are those of the plain module.
        module.net.compile(**hardware.compile)
    return module


def fit_callbacks(
    recipe: Recipe,
    cache: Processed,
    grid_every: int,
    checkpoint_dir: Path,
    checkpoint_every: int,
    best_checkpoint: BestCheckpoint,
    trial: TrialLink | None,
    interactive: bool,
) -> list[L.Callback]:
    """The fit's callbacks, in the order they run."""
    # Every epoch, not only when val Dice improves (what save_last=True does since Lightning
    # 2.6): a resumed run must go on from where it stopped, not from its best epoch.
    last_checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename=Path(LAST_CHECKPOINT).stem,
        save_top_k=1,
        enable_version_counter=False,
    )
    val_images, val_masks = open_split(cache, "val")
    return [
        best_checkpoint,
        last_checkpoint,
        *([StepCheckpoint(checkpoint_dir, checkpoint_every)] if checkpoint_every else []),
        EarlyStopping(
            monitor="val_dice",
            mode="max",
            patience=recipe.patience,
            min_delta=EARLY_STOP_MIN_DELTA,
        ),
        LearningRateMonitor(logging_interval="epoch"),
        EpochTimer(),
        StopTogether(),
        PredictionGrid(
            np.array(val_images[:GRID_IMAGES]), np.array(val_masks[:GRID_IMAGES]), grid_every
        ),
        *([] if interactive else [EpochSummary(f"trial {trial.trial_number}: " if trial else "")]),
        *([WeightEMA(recipe.ema_decay)] if recipe.ema_decay else []),
        *([TrialPruning(trial)] if trial and is_rank_zero() else []),
    ]


def fit_trainer(
    recipe: Recipe,
    runtime: RuntimeConfig,
    hardware: Hardware,
    callbacks: list[L.Callback],
    journal: Journal | None,
    checkpoint_dir: Path,
    interactive: bool,
) -> L.Trainer:
    """The Trainer of the fit: its budget, hardware and clipping, logging into the journal."""
    return L.Trainer(
        max_epochs=recipe.max_epochs,
        max_time=runtime.max_time or None,
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        num_nodes=runtime.num_nodes,
        strategy=runtime.strategy,
        precision=hardware.precision,
        benchmark=hardware.cudnn_benchmark,
        **recipe.optimization.trainer_arguments(),
        callbacks=callbacks,
        logger=JournalLogger(journal),
        plugins=[DurableCheckpointIO(journal)],
        enable_progress_bar=interactive,
        # Its table ends in "Total Flops 0" on a CPU; the size is one line instead (fit).
        enable_model_summary=False,
        default_root_dir=checkpoint_dir,
    )


def hardware_tags(hardware: Hardware, trainer: L.Trainer, batch_size: int) -> dict[str, Any]:
    """Where and how the fit runs, as the run's tags."""
    return {
        PRECISION_TAG: hardware.precision,
        NUM_WORKERS_TAG: hardware.num_workers,
        DEVICE_TAG: torch.cuda.get_device_name() if hardware.on_gpu else "cpu",
        CHANNELS_LAST_TAG: str(hardware.channels_last).lower(),
        COMPILE_TAG: compile_tag(hardware.compile),
        CUDNN_BENCHMARK_TAG: str(hardware.cudnn_benchmark).lower(),
        STRATEGY_TAG: type(trainer.strategy).__name__,
        WORLD_SIZE_TAG: trainer.world_size,
        GLOBAL_BATCH_TAG: batch_size * trainer.world_size,
    }


def fit_result(trainer: L.Trainer, best_checkpoint: BestCheckpoint) -> FitResult:
    if not best_checkpoint.best_model_path:
        raise PipelineError(
            "training ended before its first validation, so there is no model: raise max_epochs "
            "or max_time"
        )
    best = SegmentationModule.from_checkpoint(best_checkpoint.best_model_path)
    summary = {
        "best_val_dice": float(best_checkpoint.best_model_score),
        "epochs_trained": trainer.current_epoch,
        "stopped_early": bool(trainer.early_stopping_callback.stopped_epoch),
        "parameters": sum(parameter.numel() for parameter in best.net.parameters()),
    }
    return FitResult(best, summary)
