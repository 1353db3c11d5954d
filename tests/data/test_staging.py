"""Staging folders of a step that died (SIGKILL, OOM, power cut) are cleared by the next run of
the same step; a live step's staging folder is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from data_helpers import leftovers, make_dataset

from pipeline import folders
from pipeline.data.preprocess import preprocess

# A step that has begun to write its output, then waits (to be killed, or to be left running).
STAGING_STEP = """
import sys, time
from pathlib import Path
from pipeline import folders
with folders.staging_beside(Path(sys.argv[1])) as staging:
    (staging / "train_images.npy").write_bytes(b"half written")
    print(staging, flush=True)
    time.sleep(600)
"""


def _start_staging(destination: Path) -> tuple[subprocess.Popen, Path]:
    step = subprocess.Popen(
        [sys.executable, "-c", STAGING_STEP, str(destination)], stdout=subprocess.PIPE, text=True
    )
    line = step.stdout.readline().strip()  # type: ignore[union-attr]
    assert line, "the staging step died before it staged anything"
    return step, Path(line)


@pytest.fixture
def steps() -> Iterator[list[subprocess.Popen]]:
    """Staging steps a test starts; those still running at its end are killed."""
    started: list[subprocess.Popen] = []
    yield started
    for step in started:
        if step.poll() is None:
            os.kill(step.pid, signal.SIGKILL)
        step.wait()
        step.stdout.close()  # type: ignore[union-attr]


def _preprocess(raw: Path, out: Path) -> None:
    preprocess(raw, out, 16, val_fraction=0.2, test_fraction=0.2, seed=0, num_workers=1)


@pytest.mark.fault
def test_a_killed_steps_staging_is_removed_and_a_live_ones_kept(
    tmp_path: Path, steps: list[subprocess.Popen]
) -> None:
    raw = make_dataset(tmp_path / "raw", 5).parent
    out = tmp_path / "processed"
    killed, killed_staging = _start_staging(out)
    steps.append(killed)
    live, live_staging = _start_staging(out)
    steps.append(live)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed_staging.is_dir() and live_staging.is_dir()

    _preprocess(raw, out)

    assert folders.read_marker(out) is not None
    assert not killed_staging.exists()
    assert (live_staging / "train_images.npy").read_bytes() == b"half written"
    assert leftovers(tmp_path) == [live_staging.name]
    assert live.poll() is None


def test_only_staging_folders_of_the_same_destination_are_cleared(
    tmp_path: Path, steps: list[subprocess.Popen]
) -> None:
    other, other_staging = _start_staging(tmp_path / "raw")
    steps.append(other)
    os.kill(other.pid, signal.SIGKILL)
    other.wait()
    with folders.staging_beside(tmp_path / "processed"):
        pass
    assert other_staging.is_dir()  # the next download clears it, not a preprocess


def test_lockless_staging_of_older_code_is_removed_after_an_hour(tmp_path: Path) -> None:
    destination = tmp_path / "processed"
    old = tmp_path / ".processed.staging-old1234"
    young = tmp_path / ".processed.staging-new5678"
    for folder in (old, young):
        folder.mkdir()
        (folder / "train_images.npy").write_bytes(b"half written")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    with folders.staging_beside(destination) as staging:
        assert not old.exists()
        assert young.is_dir()  # may be another step of older code, still at work
        assert (staging / folders.STAGING_LOCK).is_file()


def test_the_lock_file_is_not_published(tmp_path: Path) -> None:
    raw = make_dataset(tmp_path / "raw", 5).parent
    _preprocess(raw, tmp_path / "processed")
    assert not list((tmp_path / "processed").rglob("*.lock*"))
    assert leftovers(tmp_path) == []


def test_a_retired_output_left_by_a_killed_swap_is_removed_once_the_output_exists(
    tmp_path: Path,
) -> None:
    raw = make_dataset(tmp_path / "raw", 5).parent
    out = tmp_path / "processed"
    retired = tmp_path / ".processed.retired-4242"
    retired.mkdir()
    folders.write_marker(retired, {"digest": "an older output"})
    _preprocess(raw, out)  # no output yet: the retired one may be the last good one, so kept
    assert retired.is_dir()
    _preprocess(raw, out)
    assert not retired.exists()
    assert leftovers(tmp_path) == []
