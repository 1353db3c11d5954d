"""Training outlives a tracking outage longer than the MLflow client's retries: the real
Postgres-backed server (docker/mlflow-server.sh) is stopped for 60 s in the middle of `main`'s
training; training goes on, and every epoch's metrics arrive exactly once when it is back.

Before the journal, the client gave up after its retries, `main` ended with a traceback, its
main and train runs stayed RUNNING, and the next `main` trained from epoch 1 again."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.orchestration.project import project_dir, step_command
from tests.e2e.test_resume import checkpoint_epoch
from tests.stack.stack import (
    Database,
    Server,
    client_environment,
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


def test_training_goes_on_through_an_outage_and_logs_every_epoch_once(
    tmp_path: Path, database: Database, s3
) -> None:
    server = start_server(tmp_path, database, s3)
    folder = tmp_path / "client"
    checkpoints = folder / "checkpoints"
    params = {
        "source": "synthetic:24",
        "image_size": "32",
        "base_channels": "4",
        "depth": "1",
        "max_epochs": "100000",
        "patience": "100000",
        # Training ends half-way through the outage, then waits to deliver what it kept.
        "max_time": "00:00:00:30",
        "batch_size": "8",
        "num_workers": "0",
        "promote": "false",
        "log_data": "false",
        "raw_dir": str(folder / "raw"),
        "processed_dir": str(folder / "processed"),
        "checkpoint_dir": str(checkpoints),
        "onnx": "false",
    }
    log = tmp_path / "main.log"
    main = subprocess.Popen(
        [sys.executable, *shlex.split(step_command("main", params))[1:]],
        cwd=project_dir(),
        env={**client_environment(folder, server), **SHORT_RETRIES},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
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
    experiment = client.get_experiment_by_name("unet-person")
    runs = client.search_runs([experiment.experiment_id])
    assert {run.info.status for run in runs} == {"FINISHED"}  # no ghost left RUNNING
    (train,) = [r for r in runs if r.data.tags["mlflow.project.entryPoint"] == "train"]
    epochs = len(re.findall(r"unet_person epoch \d+/", output))  # one line per epoch trained
    assert epochs > epoch_when_back
    for key in ("val_dice", "train_loss_epoch", "train_dice", "epoch_time_s"):
        history = client.get_metric_history(train.info.run_id, key)
        steps = [metric.step for metric in history]
        assert len(steps) == epochs, key  # every epoch, the outage's too, exactly once
        assert steps == sorted(set(steps)), key
        delivered = [metric.timestamp for metric in sorted(history, key=lambda m: m.step)]
        assert delivered == sorted(delivered), key  # recorded in training order
    evaluate = [r for r in runs if r.data.tags["mlflow.project.entryPoint"] == "evaluate"]
    assert "test_dice" in evaluate[0].data.metrics
