"""A `tune` trial's train step talks to its Optuna study: it reports val Dice each epoch and stops
when the study's pruner says the trial cannot catch up.

The trial is named to the step in an environment variable, not a parameter, so a trial's train
run has exactly the params of any other train run with the same settings (and `main` or a later
study can reuse it). Optuna is imported only in a trial's train process.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L

from pipeline.errors import EndedEarly, PipelineError

TRIAL_VARIABLE = "UNET_PERSON_TRIAL"
PRUNERS = ("median", "hyperband", "none")
# Epochs every trial trains before the median pruner may stop it: val Dice of the first epochs
# says little about where a run ends.
WARMUP_EPOCHS = 2
# A worker beats for its running trial this often; an RDB storage fails (and queues again) a
# trial whose worker was silent for the grace period: a killed worker on another machine.
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
SCHEMA_ATTEMPTS = 8  # opening a new RDB storage while other workers make its tables


class TrialPruned(EndedEarly):
    """The study's pruner stopped this trial; its run ends KILLED, tagged as pruned."""


@dataclass(frozen=True)
class TrialLink:
    """What a train step needs to report to its trial: where the study is, which trial, and
    the pruner the study runs (a pruner is code, not kept in the storage)."""

    storage: str
    study_name: str
    trial_number: int
    pruner: str
    max_epochs: int

    def to_environment(self) -> dict[str, str]:
        return {TRIAL_VARIABLE: json.dumps(asdict(self))}

    @classmethod
    def from_environment(cls) -> TrialLink | None:
        text = os.environ.get(TRIAL_VARIABLE)
        return cls(**json.loads(text)) if text else None


def make_pruner(name: str, max_epochs: int) -> Any:
    """Optuna's pruner of that name; `max_epochs` bounds Hyperband's budget."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=WARMUP_EPOCHS)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise PipelineError(f"parameter pruner={name!r} is not one of {', '.join(PRUNERS)}")


def open_storage(url: str) -> Any:
    """An Optuna storage from its URL: `journal:<file>` (Optuna's journal file, safe for
    several processes on one machine) or an RDB URL (postgresql://, mysql://), with
    heartbeats so that a trial of a killed worker is failed and retried."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.startswith("journal:"):
        journal = Path(url.removeprefix("journal:")).expanduser()
        journal.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(journal)))
    import sqlalchemy.exc

    def rdb() -> Any:
        with warnings.catch_warnings():  # Optuna marks heartbeats experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=3
                ),
            )

    for attempt in range(1, SCHEMA_ATTEMPTS):
        try:
            return rdb()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Workers started together on a new database all create Optuna's tables; all but
            # one collide (a duplicate type or table) and find the tables made a moment later.
            time.sleep(0.2 * attempt)
    return rdb()


class TrialPruning(L.Callback):
    """Reports val Dice to the trial after each validation (the epoch as the step) and raises
    TrialPruned when the pruner says so: at validation end, after Lightning logged the epoch's
    metrics, so the pruned epoch's own val Dice stays with the run."""

    def __init__(self, link: TrialLink) -> None:
        import optuna

        self.storage = open_storage(link.storage)
        study = optuna.load_study(
            study_name=link.study_name,
            storage=self.storage,
            pruner=make_pruner(link.pruner, link.max_epochs),
        )
        self.trial_id = self.storage.get_trial_id_from_study_id_trial_number(
            self.storage.get_study_id_from_name(link.study_name), link.trial_number
        )
        self.trial = optuna.trial.Trial(study, self.trial_id)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val_dice" not in trainer.callback_metrics:
            return
        epoch = trainer.current_epoch
        dice = float(trainer.callback_metrics["val_dice"])
        if epoch in self.storage.get_trial(self.trial_id).intermediate_values:
            return  # a resumed trial reports the epochs after its checkpoint only once
        self.trial.report(dice, epoch)
        if self.trial.should_prune():
            raise TrialPruned(
                f"trial {self.trial.number} pruned after epoch {epoch} (val Dice {dice:.4f}): "
                "the study's pruner found it behind the other trials at that epoch"
            )
