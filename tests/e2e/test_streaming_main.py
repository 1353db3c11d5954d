"""`main` with its processed data as shards on S3 (moto in server mode, real HTTP and boto3):
download, preprocess to s3://, train and evaluate streaming from there, promote. Killed with
`kill -9` mid-epoch, the same command reuses the finished shards and goes on from the middle of
that epoch; an S3 outage is ridden out, or ends the step resumable."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.training.checkpoints import LAST_CHECKPOINT
from tests.conftest import free_port, isolated_environment
from tests.e2e.test_hard_kill import runs_by_entry_point
from tests.e2e.test_resume import Started, main_process
from tests.s3 import S3_CREDENTIALS, lower, moto_bucket, moto_server

pytestmark = pytest.mark.e2e

BUCKET = "datasets"
PROCESSED = f"s3://{BUCKET}/person/32"
EPOCHS = 8


@pytest.fixture(scope="module")
def s3_env():
    """The variables a step reads S3's address and credentials from, as the stack sets them."""
    for endpoint, _ in moto_bucket(BUCKET):
        yield {**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": endpoint}


def saved(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def wait_for_step(folder: Path, started: Started, past: int) -> int:
    """The step of the run's last.ckpt, once it is past `past`."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for found in (folder / "checkpoints").glob(f"*/{LAST_CHECKPOINT}"):
            try:
                step = saved(found)["global_step"]
            except (OSError, RuntimeError, EOFError):  # caught mid-write
                continue
            if step > past:
                return step
        assert started.process.poll() is None, started.output()
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint past step {past} appeared")


def kill_mid_epoch(folder: Path, started: Started, steps: int) -> Path:
    """`kill -9` of the whole process group once its last.ckpt is part-way through an epoch
    after the first: frozen first (SIGSTOP), so no newer checkpoint replaces the one seen."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        for found in (folder / "checkpoints").glob(f"*/{LAST_CHECKPOINT}"):
            os.killpg(started.process.pid, signal.SIGSTOP)
            try:
                step = saved(found)["global_step"]
            except (OSError, RuntimeError, EOFError):  # caught mid-write
                step = 0
            if step > steps and step % steps:
                os.killpg(started.process.pid, signal.SIGKILL)
                started.process.wait(timeout=30)
                return found
            os.killpg(started.process.pid, signal.SIGCONT)
        assert started.process.poll() is None, started.output()
        time.sleep(0.02)
    raise AssertionError("no mid-epoch checkpoint appeared")


@pytest.mark.fault
def test_a_main_on_s3_killed_mid_epoch_reuses_the_shards_and_resumes_in_that_epoch(
    s3_env, tmp_path
) -> None:
    settings = {
        "processed_dir": PROCESSED,
        "processed_format": "shards",
        "batch_size": "2",  # 8 steps an epoch over 16 training images
        "checkpoint_every": "3",
        "max_epochs": str(EPOCHS),
    }
    steps = 8
    first = main_process(tmp_path, new_session=True, env=s3_env, **settings)
    checkpoint = kill_mid_epoch(tmp_path, first, steps)
    killed_at = saved(checkpoint)
    assert killed_at["loops"]["fit_loop"]["state_dict"]["combined_loader"]  # LitData's place

    returncode, output = main_process(tmp_path, env=s3_env, **settings).finish(timeout=600)
    assert returncode == 0, output
    assert "preprocess: reusing finished run" in output  # the shards on S3, whole
    run_id = checkpoint.parent.name
    assert f"train: resuming interrupted run {run_id}" in output
    s3 = boto3.client("s3", endpoint_url=s3_env["MLFLOW_S3_ENDPOINT_URL"], **lower(S3_CREDENTIALS))
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert {key.split("/")[2] for key in keys} >= {"train", "val", "test"}
    assert not (tmp_path / "processed").exists()  # nothing written to the local default
    runs = runs_by_entry_point(tmp_path)
    assert {name: sorted(run.info.status for run in found) for name, found in runs.items()} == {
        "download": ["FINISHED"],
        "preprocess": ["FINISHED"],
        "train": ["FINISHED"],
        "evaluate": ["FINISHED"],
        "promote": ["FINISHED"],
        "main": ["FINISHED", "KILLED"],
    }
    assert runs["train"][0].data.params["data_dir"] == PROCESSED
    assert 0 <= runs["evaluate"][0].data.metrics["test_dice"] <= 1
    client = MlflowClient(tracking_uri=isolated_environment(tmp_path)["MLFLOW_TRACKING_URI"])
    assert client.get_run(run_id).data.metrics["epochs_trained"] == EPOCHS
    # Each epoch's figures are logged at its last step. Every epoch took `steps` steps, the
    # one cut by the kill too: resumed from its start, it would have taken more; with any
    # batch of it left out, fewer.
    epoch_ends = [metric.step for metric in client.get_metric_history(run_id, "val_dice")]
    assert len(epoch_ends) == EPOCHS
    assert set(np.diff(epoch_ends)) == {steps}
    assert epoch_ends[-1] == EPOCHS * steps - 1
    logged = [metric.step for metric in client.get_metric_history(run_id, "train_loss_step")]
    assert len(logged) == len(set(logged))  # the steps it logs continue: none twice
    assert killed_at["global_step"] in range(min(logged), max(logged))


@pytest.mark.fault
def test_an_s3_outage_mid_epoch_is_ridden_out_or_ends_the_step_resumable(tmp_path) -> None:
    """An outage shorter than UNET_PERSON_S3_OUTAGE_S is retried through; a longer one ends
    the step within about that bound, one line naming the URI, and the same command resumes
    once S3 is back. A cache far smaller than a chunk makes every epoch download again."""
    budget_s = 10
    port = free_port()
    server = moto_server(port)
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, **lower(S3_CREDENTIALS)).create_bucket(
        Bucket="outage"
    )
    processed = "s3://outage/person"
    env = {
        **S3_CREDENTIALS,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "UNET_PERSON_S3_OUTAGE_S": str(budget_s),
    }
    settings = {
        "processed_dir": processed,
        "processed_format": "shards",
        "batch_size": "2",
        "checkpoint_every": "3",
        "cache_size": "1KB",
        "max_epochs": str(EPOCHS),
    }
    steps = 8
    first = main_process(tmp_path, env=env, **settings)
    try:
        before = wait_for_step(tmp_path, first, steps)
        server.stop()
        time.sleep(4)  # twice what obstore alone retries a refused connection for
        server = moto_server(port)
        wait_for_step(tmp_path, first, before + 2 * steps)  # went on through the outage

        server.stop()
        stopped = time.monotonic()
        returncode, output = first.finish(timeout=240)
        waited = time.monotonic() - stopped
        assert returncode == 2, output
        (line,) = [line for line in output.splitlines() if "S3 did not answer" in line]
        assert line.startswith(f"train: error: data_dir={processed}/")
        assert "run the same command again once the endpoint answers" in line
        assert waited < budget_s + 60, waited

        server = moto_server(port)
        returncode, output = main_process(tmp_path, env=env, **settings).finish(timeout=600)
        assert returncode == 0, output
        assert "train: resuming interrupted run" in output
        (train,) = runs_by_entry_point(tmp_path)["train"]
        assert train.data.metrics["epochs_trained"] == EPOCHS
    finally:
        first.process.kill()
        server.stop()
