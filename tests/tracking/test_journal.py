"""The journal: metrics kept on disk, released by checkpoints, delivered once and in order,
through outages of any length, and never twice after a resume."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.tracking import journal as journal_module
from pipeline.tracking.journal import (
    ENTRIES_FILE,
    IMAGES_FOLDER,
    NOTHING,
    Journal,
    stepped_image_files,
)


@pytest.fixture
def run_id() -> str:
    mlflow.set_experiment("journal")
    return (
        MlflowClient()
        .create_run(mlflow.get_experiment_by_name("journal").experiment_id)
        .info.run_id
    )


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch) -> None:
    monkeypatch.setattr(journal_module, "FIRST_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(journal_module, "LONGEST_RETRY_SECONDS", 0.05)


def history(run_id: str, key: str) -> list[tuple[int, float, int]]:
    return [(m.step, m.value, m.timestamp) for m in MlflowClient().get_metric_history(run_id, key)]


def wait_until(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class FlakyClient:
    """A client whose store is away for the first `outage` seconds, as the real one raises."""

    def __init__(self, outage: float) -> None:
        self.real = MlflowClient()
        self.back_at = time.monotonic() + outage
        self.failed_calls = 0

    def __getattr__(self, name: str):
        method = getattr(self.real, name)

        def call(*args, **kwargs):
            if time.monotonic() < self.back_at:
                self.failed_calls += 1
                raise MlflowException("API request to http://tracking failed with exception ...")
            return method(*args, **kwargs)

        return call


def test_only_what_a_checkpoint_covers_is_delivered(tmp_path: Path, run_id: str) -> None:
    journal = Journal(tmp_path, run_id, MlflowClient())
    journal.record_metrics({"train_loss_step": 0.9}, step=1)
    journal.record_metrics({"train_loss_step": 0.8}, step=2)
    time.sleep(0.3)
    assert history(run_id, "train_loss_step") == []  # no checkpoint yet: a resume would redo them
    journal.release(1)
    wait_until(lambda: len(history(run_id, "train_loss_step")) == 1)
    journal.close()
    assert [step for step, _, _ in history(run_id, "train_loss_step")] == [1, 2]


def test_each_key_and_step_is_recorded_once(tmp_path: Path, run_id: str) -> None:
    journal = Journal(tmp_path, run_id, MlflowClient())
    journal.record_metrics({"val_dice": 0.5, "val_loss": 0.7}, step=10)
    journal.record_metrics({"val_dice": 0.6}, step=10)  # logged again after a resume
    journal.close()
    assert [(step, value) for step, value, _ in history(run_id, "val_dice")] == [(10, 0.5)]
    assert len(history(run_id, "val_loss")) == 1


def test_an_outage_delays_delivery_but_loses_and_repeats_nothing(
    tmp_path: Path, run_id: str
) -> None:
    client = FlakyClient(outage=1.0)
    journal = Journal(tmp_path, run_id, client)
    started = time.monotonic()
    for epoch in range(20):
        journal.record_metrics({"val_dice": epoch / 20, "epoch": epoch}, step=epoch)
        journal.release(epoch)
    # Recording never waits for the store: training goes on through the outage.
    assert time.monotonic() - started < 0.5
    journal.close()
    assert client.failed_calls > 0
    delivered = history(run_id, "val_dice")
    assert [step for step, _, _ in delivered] == list(range(20))
    timestamps = [timestamp for _, _, timestamp in delivered]
    assert timestamps == sorted(timestamps)  # the time each was recorded, not delivered


def test_sending_again_after_a_crash_adds_no_row(tmp_path: Path, run_id: str) -> None:
    journal = Journal(tmp_path, run_id, MlflowClient())
    journal.record_metrics({"val_dice": 0.25}, step=3)
    journal.close()
    # Killed between the store's answer and the bookkeeping: the state says nothing went out.
    (tmp_path / journal_module.STATE_FILE).write_text(json.dumps({"delivered": 0, "released": 3}))
    Journal(tmp_path, run_id, MlflowClient()).close()
    assert [(step, value) for step, value, _ in history(run_id, "val_dice")] == [(3, 0.25)]


def test_a_resume_drops_what_came_after_its_checkpoint(tmp_path: Path, run_id: str) -> None:
    journal = Journal(tmp_path, run_id, MlflowClient())
    grid = Image.fromarray(np.zeros((8, 16, 3), np.uint8))
    for step in (1, 2):
        journal.record_metrics({"train_loss_step": 1.0 / step}, step=step)
    journal.record_image("val_predictions", grid, step=0, position=2)
    for step in (3, 4):
        journal.record_metrics({"train_loss_step": 1.0 / step}, step=step)
    journal.record_image("val_predictions", grid, step=1, position=4)
    journal.release(2)
    wait_until(lambda: journal.pending == 3)
    journal.close(drain=False)  # killed: steps 3 and 4 were never covered by a checkpoint

    resumed = Journal(tmp_path, run_id, MlflowClient())
    resumed.rewind(2)
    assert len(list((tmp_path / IMAGES_FOLDER).iterdir())) == 2  # one image, png and webp
    resumed.record_metrics({"train_loss_step": 0.31}, step=3)  # the resumed run's own values
    resumed.record_metrics({"train_loss_step": 0.21}, step=4)
    resumed.close()
    assert [(s, v) for s, v, _ in history(run_id, "train_loss_step")] == [
        (1, 1.0),
        (2, 0.5),
        (3, 0.31),
        (4, 0.21),
    ]
    images = [a.path for a in MlflowClient().list_artifacts(run_id, IMAGES_FOLDER)]
    assert len(images) == 2 and all("+step+0+" in path for path in images)


def test_before_any_checkpoint_a_restart_forgets_everything(tmp_path: Path, run_id: str) -> None:
    journal = Journal(tmp_path, run_id, MlflowClient())
    journal.record_metrics({"train_loss_step": 0.9}, step=1)
    journal.close(drain=False)
    restarted = Journal(tmp_path, run_id, MlflowClient())
    restarted.rewind(NOTHING)
    restarted.record_metrics({"train_loss_step": 0.7}, step=1)
    restarted.close()
    assert [(s, v) for s, v, _ in history(run_id, "train_loss_step")] == [(1, 0.7)]


def test_a_line_cut_short_by_a_kill_is_ignored(tmp_path: Path, run_id: str) -> None:
    journal = Journal(tmp_path, run_id, MlflowClient())
    journal.record_metrics({"val_dice": 0.4}, step=1)
    journal.close(drain=False)
    with (tmp_path / ENTRIES_FILE).open("a") as entries:
        entries.write('{"kind": "metric", "key": "val_d')
    Journal(tmp_path, run_id, MlflowClient()).close()
    assert [step for step, _, _ in history(run_id, "val_dice")] == [1]


def test_a_refused_entry_is_reported_not_retried_forever(
    tmp_path: Path, run_id: str, caplog
) -> None:
    client = MlflowClient()
    refusing = FlakyClient(outage=0)
    refusing.log_batch = lambda *args, **kwargs: (_ for _ in ()).throw(
        MlflowException("bad metric", error_code=INVALID_PARAMETER_VALUE)
    )
    journal = Journal(tmp_path, run_id, refusing)
    journal.record_metrics({"val_dice": 0.4}, step=1)
    closing = threading.Thread(target=journal.close)
    closing.start()
    closing.join(timeout=10)
    assert not closing.is_alive()
    assert "refused 1 entries" in caplog.text
    assert client.get_metric_history(run_id, "val_dice") == []


def test_a_full_disk_leaves_no_half_entry_and_says_what_to_do(
    tmp_path: Path, run_id: str, monkeypatch
) -> None:
    import errno
    import os

    from pipeline.errors import PipelineError

    journal = Journal(tmp_path / "journal", run_id, MlflowClient())
    journal.record_metrics({"val_dice": 0.5}, step=1)
    before = (tmp_path / "journal" / ENTRIES_FILE).read_bytes()
    real_write = os.write

    def half_then_full(descriptor: int, data) -> int:
        real_write(descriptor, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(journal_module.os, "write", half_then_full)
    with pytest.raises(PipelineError) as raised:
        journal.record_metrics({"val_dice": 0.6, "val_loss": 0.3}, step=3)
    assert f"no space left on the disk of {tmp_path / 'journal'}" in str(raised.value)
    assert "--checkpoint_dir on another disk" in str(raised.value)
    assert (tmp_path / "journal" / ENTRIES_FILE).read_bytes() == before  # cut back, whole lines

    monkeypatch.undo()  # space again: the same step records, as the resumed fit would
    journal.record_metrics({"val_dice": 0.6}, step=3)
    journal.close(drain=True)
    assert [step for step, _, _ in history(run_id, "val_dice")] == [1, 3]


def test_images_carry_the_names_mlflows_log_image_gives_them(run_id: str) -> None:
    """The UI shows a key's images as a stepped series by these names; when MLflow names them
    otherwise, the journal's delivered images stop being a series: this fails first."""
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    MlflowClient().log_image(
        run_id, np.zeros((4, 4, 3), np.uint8), key="grid/val", step=3, timestamp=1234
    )
    logged = sorted(a.path for a in MlflowClient().list_artifacts(run_id, IMAGES_FOLDER))
    ours = sorted(stepped_image_files("grid/val", 3, 1234))
    assert len(logged) == len(ours) == 2
    for name, written in zip(ours, logged, strict=True):
        made = re.search(uuid, name).group(0)  # a fresh uuid per image, as MLflow's
        shape = re.escape(f"{IMAGES_FOLDER}/{name}").replace(re.escape(made), uuid)
        assert re.fullmatch(shape, written), (name, written)
