"""Lightning's side of the journal: a logger that records into it, and the epoch's training
metrics recorded before its checkpoints (pipeline/training/checkpoints.py releases what a saved
checkpoint covers).

Lightning's MLFlowLogger sends each metric straight to the server: an outage longer than the
client's retries ends the fit, and a fit resumed from its last checkpoint logs the steps after
it a second time. Recording into the run's journal (pipeline/tracking/journal.py) instead
keeps training independent of the server and the record free of repeats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from PIL import Image

from pipeline.tracking.journal import Journal


class JournalLogger(Logger):
    """Records metrics and images of one MLflow run into its journal."""

    def __init__(self, journal: Journal | None) -> None:
        """`journal` is None in the other ranks of a distributed fit, which log nothing."""
        super().__init__()
        self.journal = journal

    @property
    def name(self) -> str:
        return "journal"

    @property
    def version(self) -> str:
        return self.journal.run_id if self.journal else ""

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing: the run's params are logged by the entry point in the MLproject's spelling."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.journal.record_metrics(dict(metrics), step or 0)

    @rank_zero_only
    def log_image(self, image: Image.Image, key: str, step: int, position: int) -> None:
        """`step` is what the UI shows (an epoch); `position` the training step it belongs to."""
        self.journal.record_image(key, image, step, position)


class EpochMetricsBeforeCheckpoints(Checkpoint):
    """Records the epoch's training metrics (train_loss_epoch, train_dice) before the epoch's
    checkpoints are written.

    Lightning logs them only after its checkpoint callbacks ran (FitLoop.on_advance_end): a
    kill in between resumed after an epoch whose training metrics were never recorded. As a
    Checkpoint it runs among those callbacks, after the module's own epoch-end hook, and it must
    be listed before them. When Lightning logs the same (key, step) next, the journal keeps it
    once.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # What LoggerConnector.update_train_epoch_metrics is about to log, at the step it uses.
        metrics = convert_tensors_to_scalars(trainer._logger_connector.metrics["log"])
        if metrics:
            metrics.setdefault("epoch", trainer.current_epoch)
            step = trainer.fit_loop.epoch_loop._batches_that_stepped - 1
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step)
