"""Which process this is and how long it lives: the rank a launcher gave it, and an end that
comes with the end of the process that started it."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# Set by `main` for each step it starts (orchestration/project.py).
PARENT_PID_VARIABLE = "UNET_PERSON_PARENT_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_DIED_SIGNAL = signal.SIGUSR2
# Lightning's, torchrun's and SLURM's rank variables.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def is_rank_zero() -> bool:
    """Whether this is the first process of a distributed training (or the only process).

    Launchers start every rank with the step's command: only the first holds the run's lease,
    as Lightning's own rank variables tell.
    """
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def rank_variables() -> str:
    """The launcher's variables that make this process other than the first, e.g. `RANK=1`."""
    return ", ".join(
        f"{name}={os.environ[name]}" for name in RANK_VARIABLES if os.environ.get(name, "0") != "0"
    )


def die_with_parent() -> None:
    """End this step when the `main` that started it ends, however `main` ends.

    Killed by SIGKILL, `main` cannot pass anything on, and its step would go on training alone.
    On Linux the kernel signals the step when its parent dies (PR_SET_PDEATHSIG), and the step
    stops as after `docker stop`: one SIGTERM, so its run is marked failed, its checkpoints kept.
    The kernel's signal is not SIGTERM itself because it comes once per thread of the dying
    parent, and a second SIGTERM after Lightning's handler is gone would kill the step before it
    ends its run. Elsewhere a thread watches for the parent to change.

    A rank of a distributed fit that Lightning started (its parent is the first rank) holds no
    run and writes no checkpoint, and may be blocked in a collective, where no Python signal
    handler runs: the kernel kills it outright.
    """
    parent = os.environ.pop(PARENT_PID_VARIABLE, None)
    if parent is None:
        return
    first = is_rank_zero()
    stop = _stop_once if first else _kill
    if sys.platform.startswith("linux"):
        if first:
            signal.signal(PARENT_DIED_SIGNAL, _stop_once)
        died = PARENT_DIED_SIGNAL if first else signal.SIGKILL
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, died)
    else:
        threading.Thread(target=_watch_parent, args=(int(parent), stop), daemon=True).start()
    if os.getppid() != int(parent):  # it died before the kernel was asked to tell
        stop()


_stopping = threading.Event()


def _stop_once(*_) -> None:
    if not _stopping.is_set():
        _stopping.set()
        os.kill(os.getpid(), signal.SIGTERM)


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _watch_parent(parent: int, stop: Callable[[], None]) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    stop()


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ for the block, then each variable as it was: for libraries that
    read their settings from the environment (LitData's folders, S3's address)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
