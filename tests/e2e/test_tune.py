"""`tune` as its users run it (issue 22): several workers on one study, in the suite's real
PostgreSQL or the default journal file, whose every trial is a train child run; a worker
killed with `kill -9` mid-trial leaves its trial to the others, resumed from its checkpoint."""

from __future__ import annotations

import csv
import os
import re
import signal
from pathlib import Path

import optuna
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.search.study import RETRY_OF_ATTR, default_storage
from pipeline.tracking.tags import (
    BEST_RUN_TAG,
    BEST_TRIAL_TAG,
    ENDED_EARLY_TAG,
    MODEL_VERSION_TAG,
    RESUMED_TAG,
    TRIAL_TAG,
)
from pipeline.training.pruning import open_storage
from tests.e2e.test_hard_kill import client_for, runs_by_entry_point
from tests.e2e.test_resume import Started, start_entry_point, wait_for_checkpoint
from tests.stack.stack import Database

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

SETTINGS = {
    "source": "synthetic:16",
    "image_size": "32",
    "base_channels": "2",
    "depth": "1",
    "batch_size": "8",
    "num_workers": "0",
    "log_data": "false",
    "onnx": "false",
    "search_space": "lr,loss",
    "min_dice": "0",
}


def tune_process(folder: Path, **params: str) -> Started:
    """A `tune` command with the MLproject's command line, in its own process group."""
    everything = {
        **SETTINGS,
        "raw_dir": str(folder / "raw"),
        "processed_dir": str(folder / "processed"),
        "checkpoint_dir": str(folder / "checkpoints"),
        "output_dir": str(folder / "tune"),
        **params,
    }
    return start_entry_point(folder, "tune", everything, new_session=True)


def runs_of(folder: Path) -> tuple[MlflowClient, dict[str, list[Run]]]:
    return client_for(folder), runs_by_entry_point(folder)


def statuses(runs: dict[str, list[Run]]) -> set[str]:
    return {run.info.status for group in runs.values() for run in group}


def test_two_workers_on_postgres_share_one_study_of_child_train_runs(
    tmp_path: Path, database: Database
) -> None:
    storage = database.uri
    common = {"storage": storage, "study_name": "shared", "n_trials": "6", "max_epochs": "3"}
    workers = [tune_process(tmp_path, workers="2", **common), tune_process(tmp_path, **common)]
    outputs = []
    for worker in workers:
        returncode, output = worker.finish(timeout=900)
        assert returncode == 0, output[-6000:]
        outputs.append(output)
    # The bar over the study's trials, and each trial's epochs as lines that say whose they are.
    assert any(re.search(r"tune:\s+100%\|.*\| 6/6 trials", output) for output in outputs)
    assert re.search(r"trial \d+: epoch 1/3 .*val_dice=", outputs[0])

    study = optuna.load_study(study_name="shared", storage=storage)
    states = optuna.trial.TrialState
    finished = [t for t in study.trials if t.state in (states.COMPLETE, states.PRUNED)]
    assert len(finished) == 6
    assert not [t for t in study.trials if t.state in (states.RUNNING, states.WAITING)]
    assert len({t.number for t in study.trials}) == len(study.trials)
    # Each worker samples its own points: none trained twice under two trial numbers.
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 6

    client, runs = runs_of(tmp_path)
    tunes = runs["tune"]
    assert len(tunes) == 2 and {run.info.status for run in tunes} == {"FINISHED"}
    trains = {run.info.run_id: run for run in runs["train"]}
    # One train run per trial, each a child of the tune run that asked for it: none trained twice.
    assert len(trains) == len({t.user_attrs["run_id"] for t in finished}) == 6
    tune_ids = {run.info.run_id for run in tunes}
    for trial in finished:
        train = trains[trial.user_attrs["run_id"]]
        assert train.data.tags["mlflow.parentRunId"] in tune_ids
        assert train.data.tags[TRIAL_TAG] == f"shared#{trial.number}"
        assert float(train.data.params["lr"]) == pytest.approx(trial.params["lr"])
        assert train.data.params["loss"] == trial.params["loss"]
        if trial.state == states.COMPLETE:
            assert train.info.status == "FINISHED"
            assert train.data.metrics["best_val_dice"] == pytest.approx(trial.value)
        else:
            assert train.info.status == "KILLED" and ENDED_EARLY_TAG in train.data.tags

    best = max(t.value for t in finished if t.state == states.COMPLETE)
    for tune in tunes:  # each worker concludes on the whole study, not on its own trials
        assert tune.data.metrics["best_val_dice"] == pytest.approx(best)
        assert tune.data.tags[BEST_TRIAL_TAG] == str(study.best_trial.number)
        assert trains[tune.data.tags[BEST_RUN_TAG]].data.metrics["best_val_dice"] == best
        assert "test_dice" in tune.data.metrics
        artifacts = {item.path for item in client.list_artifacts(tune.info.run_id, "tune")}
        assert {"tune/trials.csv", "tune/optimization_history.png"} <= artifacts
    with (tmp_path / "tune" / "trials.csv").open() as table:
        assert len(list(csv.DictReader(table))) == len(study.trials)
    assert any(MODEL_VERSION_TAG in run.data.tags for run in runs["promote"])
    # Only pruned trials end KILLED; nothing is left RUNNING.
    assert statuses(runs) <= {"FINISHED", "KILLED"}


def test_a_worker_killed_mid_trial_leaves_its_trial_to_the_other(tmp_path: Path) -> None:
    # One trial: the second worker's only work is the killed one's, resumed.
    common = {"n_trials": "1", "max_epochs": "60", "patience": "100", "pruner": "none"}
    first = tune_process(tmp_path, **common)
    checkpoint = wait_for_checkpoint(tmp_path, first, timeout=300, min_epoch=2)
    killed_run = checkpoint.parent.name
    os.killpg(first.process.pid, signal.SIGKILL)  # an epoch takes a fraction of a second
    first.process.wait(timeout=30)
    second = tune_process(tmp_path, **common)
    returncode, output = second.finish(timeout=900)
    assert returncode == 0, output[-6000:]
    assert "of a dead worker failed; queued again" in output

    storage = open_storage(default_storage(str(tmp_path / "tune")))
    study = optuna.load_study(study_name="unet-person", storage=storage)
    states = optuna.trial.TrialState
    (dead,) = [t for t in study.trials if t.state == states.FAIL]
    (retry,) = [t for t in study.trials if t.user_attrs.get(RETRY_OF_ATTR) == dead.number]
    assert retry.state == states.COMPLETE and retry.params == dead.params
    assert [t.number for t in study.trials if t.state == states.COMPLETE] == [retry.number]

    client, runs = runs_of(tmp_path)
    # The killed trial's train run was closed by its lease and resumed, not begun again.
    resumed = client.get_run(retry.user_attrs["run_id"])
    assert resumed.info.run_id == killed_run
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags[RESUMED_TAG].startswith("KILLED")
    steps = [metric.step for metric in client.get_metric_history(killed_run, "val_dice")]
    assert len(steps) == len(set(steps))  # no epoch logged twice across the kill
    assert "RUNNING" not in statuses(runs)
    # The killed worker's tune run was closed by its lease; the other finished.
    assert sorted(run.info.status for run in runs["tune"]) == ["FINISHED", "KILLED"]
