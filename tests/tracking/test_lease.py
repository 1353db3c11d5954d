"""Leases: a RUNNING run whose process is gone is recognised by its free lock or its stale
heartbeat and closed as KILLED; a live one, or a run of another tool, is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline import locks
from pipeline.entrypoints.runner import step_run
from pipeline.errors import PipelineError
from pipeline.params import DownloadParams
from pipeline.tracking import lease as lease_module
from pipeline.tracking.lease import (
    close_abandoned_runs,
    lease,
    lease_file,
)
from pipeline.tracking.tags import CLOSED_TAG, HEARTBEAT_TAG


@pytest.fixture
def experiment_id() -> str:
    return mlflow.set_experiment("leases").experiment_id


def running_run(experiment_id: str, heartbeat_age: float | None) -> str:
    tags = {} if heartbeat_age is None else {HEARTBEAT_TAG: f"{time.time() - heartbeat_age:.0f}"}
    return MlflowClient().create_run(experiment_id, tags=tags).info.run_id


def status(run_id: str) -> str:
    return MlflowClient().get_run(run_id).info.status


def hold_in_subprocess(path: Path) -> subprocess.Popen:
    """A process that takes the lock and sleeps, as a step does while it trains."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from pipeline import locks\n"
            "with locks.hold(Path(sys.argv[1])):\n"
            "    print('held', flush=True); time.sleep(600)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.fault
def test_a_run_whose_process_was_killed_is_closed_at_once(experiment_id: str) -> None:
    run_id = running_run(experiment_id, heartbeat_age=0)  # a fresh heartbeat does not save it
    holder = hold_in_subprocess(lease_file(run_id))
    assert close_abandoned_runs(MlflowClient(), experiment_id) == []
    assert status(run_id) == "RUNNING"

    os.kill(holder.pid, signal.SIGKILL)  # as the OOM killer or `docker kill` would
    holder.wait()
    assert close_abandoned_runs(MlflowClient(), experiment_id) == [run_id]
    closed = MlflowClient().get_run(run_id)
    assert closed.info.status == "KILLED"
    assert "lease lock is free" in closed.data.tags[CLOSED_TAG]
    assert not lease_file(run_id).exists()


def test_a_run_elsewhere_is_judged_by_its_heartbeat(experiment_id: str) -> None:
    stale = running_run(experiment_id, heartbeat_age=lease_module.LEASE_SECONDS + 60)
    fresh = running_run(experiment_id, heartbeat_age=5)
    foreign = running_run(experiment_id, heartbeat_age=None)  # a notebook's run: not ours
    assert close_abandoned_runs(MlflowClient(), experiment_id) == [stale]
    assert "no heartbeat for" in MlflowClient().get_run(stale).data.tags[CLOSED_TAG]
    assert (status(fresh), status(foreign)) == ("RUNNING", "RUNNING")


def test_a_lease_beats_while_held_and_leaves_no_lock_behind(
    experiment_id: str, monkeypatch
) -> None:
    monkeypatch.setattr(lease_module, "HEARTBEAT_SECONDS", 0.1)
    run_id = running_run(experiment_id, heartbeat_age=3600)
    with lease(MlflowClient(), run_id):
        assert locks.is_held(lease_file(run_id)) is True
        time.sleep(0.5)
        beat = float(MlflowClient().get_run(run_id).data.tags[HEARTBEAT_TAG])
        assert time.time() - beat < 5
        assert close_abandoned_runs(MlflowClient(), experiment_id) == []
    assert locks.is_held(lease_file(run_id)) is None


def test_two_processes_cannot_work_on_one_run(experiment_id: str) -> None:
    run_id = running_run(experiment_id, heartbeat_age=0)
    holder = hold_in_subprocess(lease_file(run_id))
    try:
        with (
            pytest.raises(PipelineError, match="another process holds"),
            lease(MlflowClient(), run_id),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_step_given_a_run_at_work_leaves_it_alone(experiment_id: str, monkeypatch) -> None:
    """A second `python -m pipeline train` on the run a first one trains (the same MLFLOW_RUN_ID)
    is refused, and the first one's run stays RUNNING: not failed by the one refused."""
    run_id = running_run(experiment_id, heartbeat_age=0)
    holder = hold_in_subprocess(lease_file(run_id))
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    try:
        with (
            pytest.raises(PipelineError, match="another process holds"),
            step_run("train", DownloadParams()),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert status(run_id) == "RUNNING"
