"""Step commands exactly as MLflow computes them from the MLproject, run in this environment.

`main` and the tests both go through here, so there is one copy of every command: the
MLproject's. Running them as local processes also keeps `main` from starting docker inside
its own container.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mlflow.projects import _project_spec

from pipeline.errors import PipelineError
from pipeline.tracking.code_version import PACKAGE_ROOT
from pipeline.tracking.lease import is_rank_zero

PARENT_PID_VARIABLE = "UNET_PERSON_PARENT_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_DIED_SIGNAL = signal.SIGUSR2


def project_dir() -> Path:
    """The folder with the MLproject: beside the package, else the working folder."""
    for candidate in (PACKAGE_ROOT.parent, Path.cwd()):
        if (candidate / "MLproject").is_file():
            return candidate
    raise PipelineError(
        f"no MLproject beside {PACKAGE_ROOT} or in {Path.cwd()}: run from the project folder"
    )


def step_command(entry_point: str, params: dict[str, str]) -> str:
    """The shell command `mlflow run -e <entry_point>` would run with these parameters."""
    project = _project_spec.load_project(str(project_dir()))
    with tempfile.TemporaryDirectory() as storage:
        return project.get_entry_point(entry_point).compute_command(params, storage)


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


class StepInterrupted(PipelineError):
    """The step was stopped by SIGTERM or Ctrl-C: the workflow stops too, not only this step."""


def run_step(entry_point: str, params: dict[str, str], environment: dict[str, str]) -> int:
    """Run one step's command in the project folder with this interpreter first on PATH.

    SIGTERM and Ctrl-C are passed on to the step and waited for, so it can mark its run as
    failed and keep its checkpoints instead of dying mid-write; then StepInterrupted is raised.
    """
    env = {**os.environ, **environment}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env[PARENT_PID_VARIABLE] = str(os.getpid())
    process = subprocess.Popen(
        shlex.split(step_command(entry_point, params)), cwd=project_dir(), env=env
    )
    stops: list[signal.Signals] = []

    def forward(signum: int, frame) -> None:
        stops.append(signal.Signals(signum))
        process.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                exit_code = process.wait()
                break
            except KeyboardInterrupt:
                stops.append(signal.SIGINT)
                process.send_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stops:
        raise StepInterrupted(
            f"step {entry_point} was stopped ({stops[0].name}; it exited with code {exit_code})"
        )
    return exit_code
