"""Which Optuna storages a study's workers may share (issue 22): a waiting trial (one queued
again after its worker died) must go to exactly one of the workers that ask at the same moment.

Optuna's journal file and RDB storages on PostgreSQL claim it in one step (SQLite ignores the
row lock Optuna's RDB storage takes: in 20 races of 3 workers, 10 gave one trial to two, so
`tune` refuses it). MLflow 3's `mlflow.optuna`
MlflowStorage reads the trial's run status and then updates it, two tracking calls apart: two
workers that both read before either updates both get the trial and train it twice. The second
test holds both workers between the read and the update, so the window is hit every time; that
is why `tune` does not offer MlflowStorage (README, "Search").
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
from mlflow.optuna.storage import MlflowStorage

from pipeline.training.pruning import open_storage
from tests.stack.stack import Database

RUNNING = optuna.trial.TrialState.RUNNING


def waiting_trial(storage: Any) -> int:
    """A study with one queued trial; its id."""
    study = optuna.create_study(study_name="claims", storage=storage, direction="maximize")
    study.enqueue_trial({"x": 1.0})
    (trial,) = study.get_trials(deepcopy=False)
    return trial._trial_id


def claim_at_once(storages: list[Any], trial_id: int) -> list[bool]:
    """Each storage (a worker's) claims the trial for RUNNING, all started together."""
    start = threading.Barrier(len(storages))
    claims: list[bool] = [False] * len(storages)

    def claim(index: int) -> None:
        start.wait()
        claims[index] = storages[index].set_trial_state_values(trial_id, RUNNING)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(storages))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return claims


@pytest.fixture(params=["journal", "postgresql"])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage `tune` takes: the default journal file, or the suite's PostgreSQL."""
    if request.param == "journal":
        return f"journal:{tmp_path / 'journal.log'}"
    return request.getfixturevalue("database").uri


def test_the_storages_tune_takes_give_a_queued_trial_to_one_worker(storage_url: str) -> None:
    trial_id = waiting_trial(open_storage(storage_url))
    for attempt in range(5):  # five races, each on a trial queued again
        claims = claim_at_once([open_storage(storage_url) for _ in range(3)], trial_id)
        assert claims.count(True) == 1, (attempt, claims)
        storage = open_storage(storage_url)
        storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        study = optuna.load_study(study_name="claims", storage=storage)
        study.enqueue_trial({"x": 1.0})
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        trial_id = waiting[0]._trial_id


def test_mlflow_storage_gives_one_queued_trial_to_two_workers(tmp_path: Path) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment_id = mlflow.create_experiment("study", artifact_location=tmp_path.as_uri())
    workers = [MlflowStorage(experiment_id, batch_flush_interval=0.1) for _ in range(2)]
    trial_id = waiting_trial(workers[0])
    # Both workers read the trial's status before either writes its own: the window between
    # MlflowStorage's get_run and its update_run, which a slow tracking server widens.
    both_read = threading.Barrier(2)
    for worker in workers:
        client = worker._mlflow_client
        read = client.get_run

        def read_then_wait(run_id: str, read=read):
            run = read(run_id)
            both_read.wait(timeout=30)
            return run

        client.get_run = read_then_wait
    assert claim_at_once(workers, trial_id) == [True, True]  # both train it


def test_workers_started_together_on_a_new_database_all_open_it(database: Database) -> None:
    """Each RDB storage creates Optuna's tables when they are missing: workers started at once
    on a new database collide there (a duplicate type), and must open it all the same."""
    start = threading.Barrier(6)
    failures: list[BaseException] = []

    def open_it() -> None:
        start.wait()
        try:
            open_storage(database.uri)
        except Exception as error:
            failures.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
