"""Publish step outputs atomically: a folder is either absent, the old one, or complete, and
complete output carries a marker that says so.

Work happens in a staging folder beside the destination, which holds a lock for as long as its
step lives. A step killed outright (SIGKILL, the OOM killer, a power cut) cannot clean up after
itself, so the next step writing the same destination removes the staging folders whose lock
no live process holds.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import locks
from pipeline.errors import PipelineError

MARKER_FILE = ".unet-person.json"
STAGING_LOCK = ".staging.lock"
# Staging folders of code from before the lock have none: such a folder is taken for abandoned
# once nothing has been added to it for this long.
LOCKLESS_STAGING_MAX_AGE_S = 3600


def check_replaceable(destination: Path, parameter: str) -> None:
    """Refuse to overwrite a folder of the user's that no step of ours wrote."""
    if destination.exists() and read_marker(destination) is None and any(destination.iterdir()):
        raise PipelineError(
            f"{parameter} {destination} already holds files that this pipeline did not write; "
            f"choose an empty or new {parameter}, or remove that folder yourself"
        )


@contextmanager
def staging_beside(destination: Path) -> Iterator[Path]:
    """A scratch folder on the destination's filesystem, so publishing is a rename."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(destination)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(destination), dir=destination.parent))
    try:
        # The lock file appears under its real name only once it is held, so a step looking
        # for abandoned folders never finds this one's lock free while this step lives.
        with locks.hold(staging / (STAGING_LOCK + ".new"), purpose="staging") as lock:
            lock.rename(staging / STAGING_LOCK)
            yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_abandoned(destination: Path) -> None:
    """Remove what dead steps left beside `destination`: staging folders and retired outputs."""
    for staging in destination.parent.glob(glob.escape(_staging_prefix(destination)) + "*"):
        try:
            held = locks.is_held(staging / STAGING_LOCK)
        except PermissionError:  # another user's step: theirs to clean up
            continue
        if held is False or (held is None and _idle_for(staging) > LOCKLESS_STAGING_MAX_AGE_S):
            shutil.rmtree(staging, ignore_errors=True)
    # A retired output is garbage once its successor is in place; until then it may be the
    # last finished output (its step died between the two renames of `publish`), so it stays.
    if destination.exists():
        for retired in destination.parent.glob(glob.escape(f".{destination.name}.retired-") + "*"):
            shutil.rmtree(retired, ignore_errors=True)


def publish(folder: Path, destination: Path) -> None:
    """Move a finished folder to `destination`; an older output is removed only after the swap."""
    retired = destination.with_name(f".{destination.name}.retired-{os.getpid()}")
    # mkdtemp makes it private; outputs are for everyone who may read the parent.
    folder.chmod(0o755)
    (folder / STAGING_LOCK).unlink(missing_ok=True)  # when the staging folder is the output
    if destination.exists():
        destination.rename(retired)
    folder.rename(destination)
    shutil.rmtree(retired, ignore_errors=True)


def _staging_prefix(destination: Path) -> str:
    return f".{destination.name}.staging-"


def _idle_for(folder: Path) -> float:
    try:
        return time.time() - folder.stat().st_mtime
    except FileNotFoundError:  # removed meanwhile by its own step or another cleaner
        return 0.0


def write_marker(folder: Path, record: dict) -> None:
    """Record what a step left in `folder`; written last, so it only exists for finished output."""
    temporary = folder / (MARKER_FILE + ".tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True))
    temporary.replace(folder / MARKER_FILE)


def read_marker(folder: Path) -> dict | None:
    """The record a finished step left in `folder`, or None when there is none."""
    try:
        return json.loads((folder / MARKER_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
