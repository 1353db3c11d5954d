"""Lightning's side of the journal: a logger that records into it (the module records each
epoch's training metrics before its checkpoints, and pipeline/training/checkpoints.py releases
what a saved checkpoint covers).

Lightning's MLFlowLogger sends each metric straight to the server: an outage longer than the
client's retries ends the fit, and a fit resumed from its last checkpoint logs the steps after
it a second time. Recording into the run's journal (pipeline/tracking/journal.py) instead
keeps training independent of the server and the record free of repeats.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
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


def record_before_checkpoints(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """Hand epoch-end metrics to the loggers now, at the step Lightning logs them at later.

    Lightning logs what `self.log` gathered at an epoch's end only after its checkpoint
    callbacks ran: a kill right after `last.ckpt` was written resumed after an epoch whose
    training metrics were never recorded (tests/e2e/test_hard_kill.py). When Lightning logs the
    same (key, step) next, the journal keeps it once. Called from every rank; the journal's
    logger records on the first only.
    """
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step - 1)
