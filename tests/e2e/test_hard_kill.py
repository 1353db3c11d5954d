"""A hard kill loses nothing: after `kill -9` of main's whole process group (as the OOM killer,
`docker kill` or a power cut would end it), the same command closes the dead runs as KILLED and
resumes the training into the same MLflow run, each epoch's metrics logged exactly once; killed
alone, main takes its training step with it instead of leaving it to train on its own."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import locks
from pipeline.tracking.lease import lease_file
from pipeline.tracking.tags import CLOSED_TAG
from tests.conftest import isolated_environment
from tests.e2e.test_resume import MAX_EPOCHS, checkpoint_epoch, main_process, wait_for_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.fault]


def client_for(folder: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=isolated_environment(folder)["MLFLOW_TRACKING_URI"])


def runs_by_entry_point(folder: Path) -> dict[str, list]:
    client = client_for(folder)
    experiment = client.get_experiment_by_name("unet-person")
    found: dict[str, list] = {}
    for run in client.search_runs([experiment.experiment_id]):
        found.setdefault(run.data.tags["mlflow.project.entryPoint"], []).append(run)
    return found


def test_a_hard_killed_main_resumes_its_training_into_the_same_run(tmp_path: Path) -> None:
    first = main_process(tmp_path, new_session=True)
    checkpoint = wait_for_checkpoint(tmp_path, first, timeout=240, min_epoch=3)
    os.killpg(first.process.pid, signal.SIGKILL)
    first.process.wait(timeout=30)
    train_id = checkpoint.parent.name
    killed = {name: runs[0] for name, runs in runs_by_entry_point(tmp_path).items()}
    # Before leases, these two stayed RUNNING forever and the next main trained from epoch 1.
    assert (killed["main"].info.status, killed["train"].info.status) == ("RUNNING", "RUNNING")
    restored_epoch = checkpoint_epoch(checkpoint.parent / "last.ckpt")

    returncode, output = main_process(tmp_path).finish(timeout=600)
    assert returncode == 0, output
    assert f"run {train_id} was left RUNNING, but its process is gone" in output
    assert f"train: resuming interrupted run {train_id}" in output
    trained_again = [int(epoch) for epoch in re.findall(r"epoch (\d+)/", output)]
    assert min(trained_again) >= restored_epoch + 1  # from the last epoch, not the best one

    runs = runs_by_entry_point(tmp_path)
    mains = {run.info.run_id: run for run in runs["main"]}
    dead_main = mains.pop(killed["main"].info.run_id)
    assert dead_main.info.status == "KILLED"
    assert "lease lock is free" in dead_main.data.tags[CLOSED_TAG]
    assert [run.info.status for run in mains.values()] == ["FINISHED"]
    (train,) = runs["train"]  # the same run, not a second one
    assert train.info.run_id == train_id
    assert train.info.status == "FINISHED"
    assert train.data.tags["unet_person.resumed_after"].startswith("KILLED: its process is gone")
    assert train.data.metrics["epochs_trained"] == MAX_EPOCHS

    client = client_for(tmp_path)
    for key in ("val_dice", "train_loss_epoch", "epoch_time_s"):
        steps = [metric.step for metric in client.get_metric_history(train_id, key)]
        assert len(steps) == MAX_EPOCHS, key  # every epoch once: none lost, none twice
        assert steps == sorted(set(steps)), key
    step_losses = [m.step for m in client.get_metric_history(train_id, "train_loss_step")]
    assert len(step_losses) == len(set(step_losses))


def test_killing_main_alone_stops_its_training_step(tmp_path: Path) -> None:
    first = main_process(tmp_path)
    checkpoint = wait_for_checkpoint(tmp_path, first, timeout=240)
    train_id = checkpoint.parent.name
    assert locks.is_held(lease_file(train_id)) is True
    first.process.send_signal(signal.SIGKILL)  # main only: its step is not in the kill
    first.process.wait(timeout=30)

    deadline = time.monotonic() + 60
    while locks.is_held(lease_file(train_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not locks.is_held(lease_file(train_id)), "the step went on training without main"
    stopped = client_for(tmp_path).get_run(train_id)
    assert stopped.info.status == "FAILED", first.output()[-4000:]
    assert "stopped (SIGTERM)" in stopped.data.tags["unet_person.error"]
