"""File locks that the kernel releases when their holder dies, however it dies.

A lock held with `flock` is gone the moment its process ends: SIGKILL, the OOM killer,
`docker kill` or a reboot. So "is this lock held?" tells for certain whether the process that
took it still runs, on this machine or any machine sharing the folder. That is what decides
whether a RUNNING run, a staging folder or a promotion in progress belongs to a live process;
nothing here guesses from ages or pids.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import PipelineError

POLL_SECONDS = 0.05


@contextmanager
def hold(path: Path, timeout: float | None = None, purpose: str = "") -> Iterator[Path]:
    """Hold an exclusive lock on `path` (created if need be) for the body of the `with`.

    Waits for another holder to let go, up to `timeout` seconds (None: as long as it takes).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    waited = f" after waiting {timeout:g} s" if timeout else ""
                    raise PipelineError(
                        f"another process holds {path} ({purpose or 'a lock'}){waited}: wait for "
                        "it to finish, or stop it"
                    ) from None
                time.sleep(POLL_SECONDS)
        yield path
    finally:
        os.close(descriptor)  # closing the last descriptor releases the lock


def is_held(path: Path) -> bool | None:
    """Whether a live process holds the lock on `path`; None when there is no such file."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)
    return False
