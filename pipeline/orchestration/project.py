"""Step commands exactly as MLflow computes them from the MLproject, run in this environment.

`main` and the tests both go through here, so there is one copy of every command: the
MLproject's. Running them as local processes also keeps `main` from starting docker inside
its own container.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import yaml

from pipeline.errors import PipelineError
from pipeline.processes import PARENT_PID_VARIABLE
from pipeline.tracking.code_version import PACKAGE_ROOT

MLPROJECT = "MLproject"


def project_dir() -> Path:
    """The folder with the MLproject: beside the package, else the working folder."""
    for candidate in (PACKAGE_ROOT.parent, Path.cwd()):
        if (candidate / MLPROJECT).is_file():
            return candidate
    raise PipelineError(
        f"no MLproject beside {PACKAGE_ROOT} or in {Path.cwd()}: run from the project folder"
    )


def step_command(entry_point: str, params: dict[str, str]) -> str:
    """The shell command `mlflow run -e <entry_point>` runs with these parameters: the
    MLproject's template with each value quoted for the shell, a parameter not given its
    default (as MLflow computes it; tests/test_mlproject.py holds the two to each other)."""
    spec = yaml.safe_load((project_dir() / MLPROJECT).read_text())["entry_points"][entry_point]
    declared = spec["parameters"]
    unknown = sorted(params.keys() - declared.keys())
    if unknown:
        raise PipelineError(f"entry point {entry_point} has no parameter {', '.join(unknown)}")
    values = {}
    for name, declaration in declared.items():
        value = params.get(name, declaration.get("default"))
        if value is None:
            raise PipelineError(f"entry point {entry_point} needs parameter {name}")
        values[name] = shlex.quote(str(value))
    return spec["command"].format(**values)


class StepInterrupted(PipelineError):
    """The step was stopped by SIGTERM or Ctrl-C: the workflow stops too, not only this step."""


# The step processes running now, each with the stop signals passed on to it: `tune` runs
# steps from several threads, and only the main thread may handle a signal.
_running: dict[subprocess.Popen, list[signal.Signals]] = {}
_running_lock = threading.Lock()


def _forward(signum: int, frame: FrameType | None) -> None:
    with _running_lock:
        for process, stops in _running.items():
            stops.append(signal.Signals(signum))
            process.send_signal(signum)


@contextmanager
def stops_forwarded() -> Iterator[None]:
    """SIGTERM passed on to every step started meanwhile, from any thread. Installed from the
    main thread (a worker thread's steps rely on the main thread having done so)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_step(entry_point: str, params: dict[str, str], environment: dict[str, str]) -> int:
    """Run one step's command in the project folder with this interpreter first on PATH.

    SIGTERM and Ctrl-C are passed on to the step and waited for, so it can mark its run as
    failed and keep its checkpoints instead of dying mid-write; then StepInterrupted is raised.
    """
    env = {**os.environ, **environment}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env[PARENT_PID_VARIABLE] = str(os.getpid())
    command = shlex.split(step_command(entry_point, params))
    stops: list[signal.Signals] = []
    with _running_lock:
        process = subprocess.Popen(command, cwd=project_dir(), env=env)
        _running[process] = stops
    try:
        with stops_forwarded():
            while True:
                try:
                    exit_code = process.wait()
                    break
                except KeyboardInterrupt:
                    stops.append(signal.SIGINT)
                    process.send_signal(signal.SIGINT)
    finally:
        with _running_lock:
            del _running[process]
    if stops:
        raise StepInterrupted(
            f"step {entry_point} was stopped ({stops[0].name}; it exited with code {exit_code})"
        )
    return exit_code
