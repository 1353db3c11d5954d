"""A `tune` trial's train step reports val Dice to its study each epoch and stops when the
study's pruner says so (issue 22): its run ends KILLED with the tag, its metrics stay, and it
is never resumed as if it had been interrupted."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from pipeline.entrypoints import train
from pipeline.errors import ENDED_EARLY_EXIT
from pipeline.orchestration.reuse import interrupted_training
from pipeline.tracking.tags import ENDED_EARLY_TAG
from pipeline.training.pruning import WARMUP_EPOCHS, TrialLink, make_pruner, open_storage
from tests.conftest import last_run
from tests.training.caches import write_finished_cache

EPOCHS = 5
STUDY = "pruning"


def a_study_of_two_perfect_trials(journal: str, pruner: str) -> int:
    """Two finished trials that reached val Dice 1.0 at every epoch; returns the number of a
    third, RUNNING, as `tune` leaves it for its train step."""
    study = optuna.create_study(
        study_name=STUDY,
        storage=open_storage(journal),
        direction="maximize",
        pruner=make_pruner(pruner, EPOCHS),
    )
    for _ in range(2):
        trial = study.ask()
        for epoch in range(EPOCHS):
            trial.report(1.0, epoch)
        study.tell(trial, 1.0)
    return study.ask().number


def train_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pruner: str) -> tuple[int, str]:
    journal = f"journal:{tmp_path / 'study' / 'journal.log'}"
    number = a_study_of_two_perfect_trials(journal, pruner)
    link = TrialLink(journal, STUDY, number, pruner, EPOCHS)
    for name, value in link.to_environment().items():
        monkeypatch.setenv(name, value)
    cache = write_finished_cache(tmp_path / "cache", 16, {"train": 8, "val": 4, "test": 2})
    settings = {
        "data_dir": str(cache), "checkpoint_dir": str(tmp_path / "checkpoints"),
        "base_channels": "2", "depth": "1", "batch_size": "4", "max_epochs": str(EPOCHS),
        "patience": "50", "augment": "none", "accelerator": "cpu", "num_workers": "0",
        "onnx": "false",
    }  # fmt: skip
    exit_code = train.main(
        [word for item in settings.items() for word in (f"--{item[0]}", item[1])]
    )
    return exit_code, journal


def reported_epochs(journal: str) -> list[int]:
    study = optuna.load_study(study_name=STUDY, storage=open_storage(journal))
    return sorted(study.trials[-1].intermediate_values)


def test_a_trial_behind_the_others_is_pruned_and_its_run_ends_killed_with_the_tag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exit_code, journal = train_trial(tmp_path, monkeypatch, "median")
    assert exit_code == ENDED_EARLY_EXIT
    run = last_run()
    assert run.info.status == "KILLED"
    tag = run.data.tags[ENDED_EARLY_TAG]
    assert f"pruned after epoch {WARMUP_EPOCHS}" in tag, tag
    # Its partial metrics stay: every epoch it trained, in MLflow and in the study.
    epochs = list(range(WARMUP_EPOCHS + 1))
    history = MlflowClient().get_metric_history(run.info.run_id, "val_dice")
    assert len(history) == len(epochs)
    assert reported_epochs(journal) == epochs
    # Over, not interrupted: `main` or a later trial does not resume it from its checkpoint.
    assert (tmp_path / "checkpoints" / run.info.run_id / "last.ckpt").is_file()
    assert interrupted_training([run], tmp_path / "checkpoints") is None


def test_without_a_pruner_the_trial_trains_every_epoch_and_reports_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exit_code, journal = train_trial(tmp_path, monkeypatch, "none")
    assert exit_code == 0
    run = last_run()
    assert run.info.status == "FINISHED" and ENDED_EARLY_TAG not in run.data.tags
    assert reported_epochs(journal) == list(range(EPOCHS))
