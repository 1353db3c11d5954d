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
import tempfile
from pathlib import Path

from mlflow.projects import _project_spec

from pipeline.errors import PipelineError
from pipeline.processes import PARENT_PID_VARIABLE
from pipeline.tracking.code_version import PACKAGE_ROOT


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
