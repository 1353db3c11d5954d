"""Checkpoints are whole after a full disk, and a checkpoint that cannot be read is set aside
instead of stopping every later resume (issue 28). These fits run in-process on a tiny cache;
tests/e2e/test_full_disk.py does the same through `main` on a real small filesystem."""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import disk
from pipeline.errors import PipelineError
from pipeline.settings import with_settings
from pipeline.tracking.tags import CHECKPOINT_SET_ASIDE_TAG
from pipeline.training.checkpoints import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    UnreadableCheckpoint,
    resumable_step,
    resume_point,
)
from pipeline.training.fit import fit
from pipeline.training.recipes import DEFAULT
from pipeline.training.runtime import RuntimeConfig
from tests.training.caches import write_cache

SETTINGS = {"base_channels": 2, "depth": 1, "batch_size": 4, "augment": "none", "patience": 50}
EXPERIMENT = "checkpoint-faults"


def fit_epochs(folder: Path, run_id: str | None, epochs: int) -> str:
    """Fit up to `epochs` in run `run_id` (a new run when None); returns the run id."""
    recipe = with_settings(DEFAULT, {**SETTINGS, "max_epochs": epochs})
    runtime = RuntimeConfig(accelerator="cpu", num_workers=0, checkpoint_dir=str(folder / "ck"))
    cache = folder / "cache"
    if not cache.exists():
        cache.mkdir()
        write_cache(cache)
    # Named, so that resuming does not depend on which experiment this process had active.
    mlflow.set_experiment(EXPERIMENT)
    with mlflow.start_run(run_id=run_id) as run, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        fit(recipe, runtime, cache, run.info.run_id, seed=0, grid_every=100)
    return run.info.run_id


def epoch_of(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]


def steps_logged(run_id: str, key: str) -> list[int]:
    return [metric.step for metric in MlflowClient().get_metric_history(run_id, key)]


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def emptied(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


DAMAGES = [cut_short, emptied, garbage]
REAL_FDOPEN = os.fdopen


class FullDiskAfter:
    """Stands in for `os.fdopen` in pipeline/disk.py: the `allowed`-th file opened and later
    ones get half their bytes written, then ENOSPC, as a full disk answers."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.opened = 0

    def __call__(self, descriptor: int, mode: str):
        file = REAL_FDOPEN(descriptor, mode)
        self.opened += 1
        if self.opened <= self.allowed:
            return file
        real_write = file.write

        def write(data) -> int:
            real_write(bytes(data)[: len(data) // 2])
            file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        file.write = write
        return file


def test_a_full_disk_keeps_the_old_file_whole_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "last.ckpt"
    disk.write_whole(target, b"old" * 1000, "checkpoint last.ckpt", "free space")
    monkeypatch.setattr(disk.os, "fdopen", FullDiskAfter(allowed=0))
    with pytest.raises(PipelineError) as raised:
        disk.write_whole(target, b"new" * 2000, "checkpoint last.ckpt", "free space")
    message = str(raised.value)
    assert f"no space left on the disk of {tmp_path} to write checkpoint last.ckpt" in message
    assert "it needed 6.0 KB and had" in message
    assert "\n" not in message
    assert target.read_bytes() == b"old" * 1000
    assert sorted(path.name for path in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_checkpoint_the_disk_cannot_take_ends_the_fit_in_one_line_and_it_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Epoch 0 writes best.ckpt and last.ckpt; the disk is full from epoch 1's first checkpoint.
    monkeypatch.setattr(disk.os, "fdopen", FullDiskAfter(allowed=2))
    with pytest.raises(PipelineError, match=r"no space left on the disk of .* to write checkpoint"):
        fit_epochs(tmp_path, None, epochs=4)
    (run,) = MlflowClient().search_runs([mlflow.get_experiment_by_name(EXPERIMENT).experiment_id])
    folder = tmp_path / "ck" / run.info.run_id
    assert sorted(path.name for path in folder.glob("*.ckpt*")) == [
        BEST_CHECKPOINT,
        LAST_CHECKPOINT,
    ]
    assert epoch_of(folder / LAST_CHECKPOINT) == 0  # whole, and readable
    assert not list(folder.glob(".*"))  # no temporary file left behind

    monkeypatch.undo()  # space again
    fit_epochs(tmp_path, run.info.run_id, epochs=4)
    assert epoch_of(folder / LAST_CHECKPOINT) == 3
    assert sorted(steps_logged(run.info.run_id, "epoch_time_s")) == [1, 3, 5, 7]


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda damage: damage.__name__)
def test_an_unreadable_last_checkpoint_is_set_aside_and_the_fit_goes_on_from_the_best(
    tmp_path: Path, damage
) -> None:
    run_id = fit_epochs(tmp_path, None, epochs=2)
    folder = tmp_path / "ck" / run_id
    best_step = resumable_step(folder / BEST_CHECKPOINT)
    damage(folder / LAST_CHECKPOINT)
    with pytest.raises(UnreadableCheckpoint):
        resumable_step(folder / LAST_CHECKPOINT)

    fit_epochs(tmp_path, run_id, epochs=4)
    (aside,) = folder.glob(f"{LAST_CHECKPOINT}.corrupt-*")
    tag = MlflowClient().get_run(run_id).data.tags[CHECKPOINT_SET_ASIDE_TAG]
    assert tag.startswith(f"set aside {aside.name} (")
    assert f"resumed from {BEST_CHECKPOINT} at step {best_step}" in tag
    assert epoch_of(folder / LAST_CHECKPOINT) == 3
    # Epochs after the best one ran twice, but each step's metrics reached the run once.
    for key in ("epoch_time_s", "val_dice", "train_loss_epoch"):
        logged = steps_logged(run_id, key)
        assert sorted(logged) == sorted(set(logged)) == [1, 3, 5, 7], key

    # Another fit of the same run meets no unreadable file again.
    fit_epochs(tmp_path, run_id, epochs=5)
    assert len(list(folder.glob("*.corrupt-*"))) == 1


def test_with_no_readable_checkpoint_the_run_starts_again_from_epoch_zero(tmp_path: Path) -> None:
    run_id = fit_epochs(tmp_path, None, epochs=2)
    folder = tmp_path / "ck" / run_id
    garbage(folder / LAST_CHECKPOINT)
    cut_short(folder / BEST_CHECKPOINT)

    fit_epochs(tmp_path, run_id, epochs=3)
    assert len(list(folder.glob(f"{LAST_CHECKPOINT}.corrupt-*"))) == 1
    assert len(list(folder.glob(f"{BEST_CHECKPOINT}.corrupt-*"))) == 1
    tag = MlflowClient().get_run(run_id).data.tags[CHECKPOINT_SET_ASIDE_TAG]
    assert "training starts again from epoch 0 in the same run" in tag
    assert epoch_of(folder / LAST_CHECKPOINT) == 2
    assert steps_logged(run_id, "epoch_time_s") == [1, 3, 5]


def test_an_unreadable_best_checkpoint_is_set_aside_and_a_new_best_is_kept(tmp_path: Path) -> None:
    run_id = fit_epochs(tmp_path, None, epochs=2)
    folder = tmp_path / "ck" / run_id
    garbage(folder / BEST_CHECKPOINT)
    assert resume_point(folder, set_aside=False).checkpoint == folder / LAST_CHECKPOINT

    fit_epochs(tmp_path, run_id, epochs=3)
    assert len(list(folder.glob(f"{BEST_CHECKPOINT}.corrupt-*"))) == 1
    tag = MlflowClient().get_run(run_id).data.tags[CHECKPOINT_SET_ASIDE_TAG]
    assert f"resumed from {LAST_CHECKPOINT}" in tag
    assert resumable_step(folder / BEST_CHECKPOINT) > 0  # written anew; the fit's end loaded it


def test_other_ranks_skip_what_they_cannot_read_without_moving_it(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    folder.mkdir()
    emptied(folder / LAST_CHECKPOINT)
    point = resume_point(folder, set_aside=False)
    assert (point.checkpoint, point.set_aside) == (None, ())
    assert (folder / LAST_CHECKPOINT).is_file()
