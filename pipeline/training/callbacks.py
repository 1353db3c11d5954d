"""Callbacks that make a training run readable in MLflow and on a plain log."""

from __future__ import annotations

import logging
import signal
import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pipeline.evaluation.figures import prediction_grid
from pipeline.evaluation.metrics import hard_predictions
from pipeline.model.inputs import to_model_input
from pipeline.training.journal_logger import record_before_checkpoints

log = logging.getLogger("unet_person")

EMA_WARMUP = 10  # TensorFlow's ExponentialMovingAverage: decay min(decay, (1 + n) / (10 + n))


def warmed_up_ema(decay: float):
    """The EMA update whose decay grows with the steps averaged, n, as TensorFlow's
    ExponentialMovingAverage does given num_updates: min(decay, (1 + n) / (10 + n)).

    A fixed decay keeps the random initialisation in the average for thousands of steps
    (0.999**1000 = 0.37 of it after 1,000): a short run then validates, and keeps, a blend of
    noise and weights that predicts nothing. Warmed up, the average follows the weights early
    on and becomes the slow average only once there is a history worth averaging.
    """

    @torch.no_grad()
    def update(averaged: torch.Tensor, current: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        if not averaged.is_floating_point():  # counters (batch norm's batches seen)
            return current
        step_decay = ((1 + steps) / (EMA_WARMUP + steps)).clamp(max=decay).to(averaged.dtype)
        return averaged.lerp(current, 1 - step_decay)

    return update


class WeightEMA(WeightAveraging):
    """Lightning's weight averaging with a warmed-up EMA (`warmed_up_ema`), buffers included:
    validation sees the averaged weights, and checkpoints hold them as the state_dict (the
    trained ones beside them, for resuming)."""

    def __init__(self, decay: float) -> None:
        super().__init__(use_buffers=True, avg_fn=warmed_up_ema(decay))


class EpochTimer(L.Callback):
    """Logs `epoch_time_s`, the wall time of each training epoch: for an epoch resumed
    part-way (Lightning then skips its start hook), the time since the resume."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Across the ranks of a distributed fit, the slowest one's: the others wait for it.
        elapsed = torch.tensor(time.perf_counter() - self._started, device=module.device)
        slowest = trainer.strategy.reduce(elapsed, reduce_op="max")
        module.log("epoch_time_s", slowest, on_epoch=True, sync_dist=True, reduce_fx="max")
        record_before_checkpoints(trainer, {"epoch_time_s": float(slowest)})


class EpochSummary(L.Callback):
    """One line per epoch where there is no terminal for a progress bar (CI, `mlflow run` logs),
    or where several trainings share one (tune's trials); `label` says whose epoch it is."""

    KEYS = ("train_loss_epoch", "val_loss", "val_dice", "lr", "epoch_time_s")

    def __init__(self, label: str = "") -> None:
        self.label = label

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = " ".join(f"{key}={float(metrics[key]):.4g}" for key in self.KEYS if key in metrics)
        log.info(
            "%sepoch %d/%d %s", self.label, trainer.current_epoch + 1, trainer.max_epochs, shown
        )


class PredictionGrid(L.Callback):
    """Every `every` epochs (and at the last), log predictions on the same validation images as
    a stepped image, `val_predictions`.

    Fixed images make the grids comparable from one epoch to the next in the MLflow UI. Each
    image is a row under the headings image / truth / prediction, enlarged to at least
    `MIN_PANEL` pixels a side, with a legend of the colours (`figures.prediction_grid`).
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, every: int) -> None:
        self.images = images
        self.masks = masks
        self.every = max(1, every)

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = epoch + 1 >= trainer.max_epochs
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not (epoch % self.every == 0 or last):
            return
        batch = torch.from_numpy(self.images).permute(0, 3, 1, 2).to(module.device)
        with torch.no_grad():
            predictions = hard_predictions(module(to_model_input(batch))).squeeze(1).cpu().numpy()
        grid = prediction_grid(self.images, self.masks, predictions)
        trainer.logger.log_image(
            grid, key="val_predictions", step=epoch, position=trainer.global_step
        )


class StopTogether(L.Callback):
    """SIGTERM (`docker stop`, a stopped `main`, a preempting scheduler) stops every rank of a
    distributed fit after the same training step: the signal only sets a flag, and after each
    training batch the ranks agree whether any of them got one. A single process stops the same
    way, after the batch at hand.

    Lightning 2.6's own handler broadcasts from inside the signal handler, which can meet the
    broadcast each rank makes before every step and leave both ranks waiting for ever (seen with
    two CPU ranks; Lightning issue 20806).
    """

    def __init__(self) -> None:
        self.signalled = False

    def on_sanity_check_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._take_over()

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._take_over()

    def _take_over(self) -> None:
        """Replace Lightning's handler, which it installs as the fit starts."""
        signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum: int, frame) -> None:
        self.signalled = True

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *_) -> None:
        if trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            raise SIGTERMException
