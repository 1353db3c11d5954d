"""A full disk and a damaged checkpoint, met through `main` as a user meets them (issue 28): one
line and exit 2, the last whole checkpoint kept, and the next `main` resumes the same run."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.tracking.tags import CHECKPOINT_SET_ASIDE_TAG, ERROR_TAG
from pipeline.training.checkpoints import LAST_CHECKPOINT, resumable_step
from tests.conftest import isolated_environment
from tests.e2e.test_resume import MAX_EPOCHS, main_process, wait_for_checkpoint
from tests.filesystems import tmpfs

pytestmark = [pytest.mark.e2e, pytest.mark.fault]


def client_for(folder: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=isolated_environment(folder)["MLFLOW_TRACKING_URI"])


def assert_every_epoch_logged_once(client: MlflowClient, run_id: str) -> None:
    for key in ("val_dice", "train_loss_epoch", "epoch_time_s"):
        steps = [metric.step for metric in client.get_metric_history(run_id, key)]
        assert len(steps) == MAX_EPOCHS, key
        assert steps == sorted(set(steps)), key


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 8 MB filesystem for the checkpoints."""
    with tmpfs(tmp_path / "checkpoints", "size=8m") as folder:
        yield folder


def test_a_disk_that_fills_during_training_ends_it_in_one_line_and_main_resumes(
    tmp_path: Path, small_disk: Path
) -> None:
    first = main_process(tmp_path, base_channels="8")
    checkpoint = wait_for_checkpoint(tmp_path, first, timeout=240)
    # Fill the disk to within half a checkpoint: the next checkpoint cannot be written whole.
    filler = small_disk / "filler"
    left = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    with filler.open("wb") as sink:
        sink.write(b"\0" * max(0, left - checkpoint.stat().st_size // 2))
    returncode, output = first.finish(timeout=300)
    assert returncode == 2, output
    (line,) = [text for text in output.splitlines() if text.startswith("train: error:")]
    assert f"no space left on the disk of {checkpoint.parent}" in line
    assert "free space there, or give --checkpoint_dir on another disk" in line
    assert "Traceback" not in output
    run_id = checkpoint.parent.name
    client = client_for(tmp_path)
    failed = client.get_run(run_id)
    assert failed.info.status == "FAILED"
    assert "no space left" in failed.data.tags[ERROR_TAG]
    assert resumable_step(checkpoint) > 0  # the last whole one, still whole
    assert not [path for path in checkpoint.parent.glob(".*.ckpt.*")]  # no temporary left

    filler.unlink()  # space again
    returncode, output = main_process(tmp_path, base_channels="8").finish(timeout=600)
    assert returncode == 0, output
    assert f"train: resuming interrupted run {run_id}" in output
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED"
    assert resumed.data.metrics["epochs_trained"] == MAX_EPOCHS
    assert_every_epoch_logged_once(client, run_id)


def test_a_cut_short_last_checkpoint_is_set_aside_and_the_next_main_finishes(
    tmp_path: Path,
) -> None:
    first = main_process(tmp_path)
    checkpoint = wait_for_checkpoint(tmp_path, first, timeout=240, min_epoch=2)
    first.process.send_signal(signal.SIGTERM)
    assert first.finish(timeout=120)[0] == 2
    # As a copy from another machine or a crash before the bytes reached the disk leaves it.
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 3])
    run_id = checkpoint.parent.name

    returncode, output = main_process(tmp_path).finish(timeout=600)
    assert returncode == 0, output
    assert "Traceback" not in output
    assert f"train: resuming interrupted run {run_id}" in output
    assert "train: set aside last.ckpt.corrupt-" in output
    (aside,) = checkpoint.parent.glob(f"{LAST_CHECKPOINT}.corrupt-*")
    client = client_for(tmp_path)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[CHECKPOINT_SET_ASIDE_TAG].startswith(f"set aside {aside.name} (")
    assert "resumed from best.ckpt" in run.data.tags[CHECKPOINT_SET_ASIDE_TAG]
    assert run.data.metrics["epochs_trained"] == MAX_EPOCHS
    assert_every_epoch_logged_once(client, run_id)
