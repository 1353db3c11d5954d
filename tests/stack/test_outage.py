"""Training outlives a tracking outage longer than the MLflow client's retries: the real
Postgres-backed server (docker/mlflow-server.sh) is stopped for 60 s in the middle of `main`'s
training; training goes on, and every epoch's metrics arrive exactly once when it is back.
A train step that the outage catches while it starts (two `tune` trials) goes on once the
server is back, in the same run.

Before the journal, the client gave up after its retries, `main` ended with a traceback, its
main and train runs stayed RUNNING, and the next `main` trained from epoch 1 again. Before
train steps were run again after an outage, such a tune trial failed, its run FAILED."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.orchestration.project import project_dir, step_command
from pipeline.tracking.tags import TRIAL_TAG
from tests.e2e.test_resume import checkpoint_epoch
from tests.stack.stack import (
    Database,
    Role,
    Server,
    client_environment,
    fresh_database,
    serve,
    start_server,
    stop_server,
)

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

OUTAGE_SECONDS = 60
# The client's own retry budget, a few seconds: far shorter than the outage.
SHORT_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


@pytest.fixture
def database(role: Role) -> Iterator[Database]:
    """A database per test: each test counts every run its store holds."""
    yield from fresh_database(role)


def last_epoch(folder: Path) -> int:
    """The epoch of the newest last.ckpt, or -1 before the first."""
    for found in folder.glob("*/last.ckpt"):
        try:
            return checkpoint_epoch(found)
        except (OSError, RuntimeError, EOFError):  # caught mid-write
            pass
    return -1


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def start_command(
    tmp_path: Path, server: Server, entry_point: str, max_time: str, **extra: str
) -> tuple[subprocess.Popen, Path, Path]:
    """`entry_point` on tiny data against `server`: its process, log and checkpoint folder."""
    folder = tmp_path / "client"
    checkpoints = folder / "checkpoints"
    params = {
        "source": "synthetic:24",
        "image_size": "32",
        "base_channels": "4",
        "depth": "1",
        "max_epochs": "100000",
        "patience": "100000",
        "max_time": max_time,
        "batch_size": "8",
        "num_workers": "0",
        "promote": "false",
        "log_data": "false",
        "raw_dir": str(folder / "raw"),
        "processed_dir": str(folder / "processed"),
        "checkpoint_dir": str(checkpoints),
        "onnx": "false",
        **extra,
    }
    log = tmp_path / f"{entry_point}.log"
    process = subprocess.Popen(
        [sys.executable, *shlex.split(step_command(entry_point, params))[1:]],
        cwd=project_dir(),
        env={**client_environment(folder, server), **SHORT_RETRIES},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return process, log, checkpoints


def test_training_goes_on_through_an_outage_and_logs_every_epoch_once(
    tmp_path: Path, database: Database, s3
) -> None:
    server = start_server(tmp_path, database, s3)
    # Training ends half-way through the outage, then waits to deliver what it kept.
    main, log, checkpoints = start_command(tmp_path, server, "main", max_time="00:00:00:30")
    try:
        wait_for(lambda: last_epoch(checkpoints) >= 1, 300, "a checkpoint", main, log)
        stop_server(server)
        epoch_when_stopped = last_epoch(checkpoints)
        time.sleep(OUTAGE_SECONDS)
        assert main.poll() is None, log.read_text()[-4000:]
        epoch_when_back = last_epoch(checkpoints)
        assert epoch_when_back > epoch_when_stopped + 5, "training stalled during the outage"
        server = serve(server.env, server.log)
        main.wait(timeout=600)
        check_every_epoch_arrived_once(server, log.read_text(), main.returncode, epoch_when_back)
    finally:
        main.kill()
        if server.process.poll() is None:
            stop_server(server)


def check_every_epoch_arrived_once(
    server: Server, output: str, returncode: int, epoch_when_back: int
) -> None:
    assert returncode == 0, output[-4000:]
    assert "the tracking store is unreachable" in output
    assert re.search(r"the tracking store is back after \d+ s", output)

    client = MlflowClient(tracking_uri=server.url)
    runs = runs_of(client)
    assert {run.info.status for run in runs} == {"FINISHED"}  # no ghost left RUNNING
    (train,) = [r for r in runs if r.data.tags["mlflow.project.entryPoint"] == "train"]
    epochs = check_epochs_logged_once(client, train, output)
    assert epochs > epoch_when_back
    evaluate = [r for r in runs if r.data.tags["mlflow.project.entryPoint"] == "evaluate"]
    assert "test_dice" in evaluate[0].data.metrics


def runs_of(client: MlflowClient) -> list[Run]:
    experiment = client.get_experiment_by_name("unet-person")
    return client.search_runs([experiment.experiment_id])


def check_epochs_logged_once(client: MlflowClient, train: Run, output: str) -> int:
    """The epochs `train` trained, each of whose metrics arrived once and in order."""
    trial = train.data.tags.get(TRIAL_TAG, "").partition("#")[2]
    label = f"trial {trial}: " if trial else ""  # a tune trial's epoch lines carry its number
    epochs = len(re.findall(rf"unet_person {label}epoch \d+/", output))  # a line per epoch
    for key in ("val_dice", "train_loss_epoch", "train_dice", "epoch_time_s"):
        history = client.get_metric_history(train.info.run_id, key)
        steps = [metric.step for metric in history]
        assert len(steps) == epochs, key  # every epoch, the outage's too, exactly once
        assert steps == sorted(set(steps)), key
        delivered = [metric.timestamp for metric in sorted(history, key=lambda m: m.step)]
        assert delivered == sorted(delivered), key  # recorded in training order
    return epochs


def steps_started(parent: int, entry_point: str) -> int:
    """Step processes of `entry_point` that process `parent` started (and that still run)."""
    started = 0
    for child in psutil.Process(parent).children():
        try:
            started += entry_point in child.cmdline()
        except psutil.NoSuchProcess:  # ended meanwhile
            continue
    return started


def test_tune_trials_caught_starting_by_an_outage_go_on_when_it_is_back(
    tmp_path: Path, database: Database, s3
) -> None:
    """Two trials start together and the server goes away while they import: both steps give
    up after the client's retries, and each runs again into its own run once it is back."""
    server = start_server(tmp_path, database, s3)
    tune, log, _ = start_command(
        tmp_path,
        server,
        "tune",
        max_time="00:00:00:10",
        n_trials="2",
        workers="2",
        search_space="lr",
        pruner="none",
        output_dir=str(tmp_path / "client" / "tune"),
    )
    try:
        wait_for(lambda: steps_started(tune.pid, "train") == 2, 300, "two trials", tune, log)
        stop_server(server)
        time.sleep(OUTAGE_SECONDS / 2)  # the steps' imports and retries take less
        assert tune.poll() is None, log.read_text()[-4000:]
        server = serve(server.env, server.log)
        tune.wait(timeout=600)
        output = log.read_text()
        assert tune.returncode == 0, output[-4000:]
        assert "stopped by the tracking outage; it goes on" in output
        client = MlflowClient(tracking_uri=server.url)
        runs = runs_of(client)
        assert {run.info.status for run in runs} == {"FINISHED"}
        trains = [r for r in runs if r.data.tags["mlflow.project.entryPoint"] == "train"]
        named = [(r.info.run_id, r.info.run_name, r.data.tags.get(TRIAL_TAG)) for r in trains]
        assert sorted(r.info.run_name for r in trains) == ["trial 0", "trial 1"], named
        for train in trains:
            assert check_epochs_logged_once(client, train, output) > 0
        (search,) = [r for r in runs if r.data.tags["mlflow.project.entryPoint"] == "tune"]
        assert search.data.metrics["trials_complete"] == 2
        assert search.data.metrics["trials_fail"] == 0
    finally:
        tune.kill()
        if server.process.poll() is None:
            stop_server(server)
