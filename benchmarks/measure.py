"""What the benchmarks share: medians of repeats, the machine's load, memory read from /proc, and
servers started as process groups that end with the benchmark however it ends."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil
import requests

MIN_REPEATS = 3
SERVER_START_TIMEOUT_S = 180
MB = 1e6
BIN = Path(sys.executable).parent

# Run beside the owner, in a session of its own: when the owner dies without stopping the process
# group it started (kill -9 of a test run), end the group; when the group ends first, end too.
# Argv: owner pid, process group id.
GROUP_WATCHDOG = """
import os, signal, sys, time
owner, group = int(sys.argv[1]), int(sys.argv[2])
def alive(kill):
    try:
        kill(0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
def group_alive():
    return alive(lambda s: os.killpg(group, s))
while group_alive() and alive(lambda s: os.kill(owner, s)):
    time.sleep(1)
if group_alive():
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while group_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_alive():
        os.killpg(group, signal.SIGKILL)
"""


def check_repeats(repeats: int) -> None:
    if repeats < MIN_REPEATS:
        raise SystemExit(f"--repeats must be at least {MIN_REPEATS}: the figures are medians")


def median(values: Sequence[float], digits: int = 2) -> float:
    return round(statistics.median(values), digits)


def load_average() -> float:
    """The 1-minute load average: other jobs on a shared machine make ratios noisy."""
    return round(os.getloadavg()[0], 2)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of a process; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0  # gone, or a zombie (which holds no memory)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """The processes below `pid`, however deep (a process pool's workers, uvicorn's)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:  # gone meanwhile
        return []


def end_with_this_process(group: int) -> subprocess.Popen:
    """Have process group `group` ended when this process dies, however it dies, so that no
    server outlives a killed test run or benchmark; returns the watchdog."""
    return subprocess.Popen(
        [sys.executable, "-c", GROUP_WATCHDOG, str(os.getpid()), str(group)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@contextmanager
def server(
    argv: list[str], env: dict[str, str], log: Path, ready: Callable[[], bool]
) -> Iterator[subprocess.Popen]:
    """`argv` in a process group of its own (ended with this process), yielded once `ready()`
    says it answers, and ended with its whole group afterwards."""
    process = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    end_with_this_process(process.pid)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _answers(ready):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield process
    finally:
        # A throwaway server with a throwaway store: nothing to shut down gracefully.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _answers(ready: Callable[[], bool]) -> bool:
    try:
        return ready()
    except requests.ConnectionError:
        return False


def http_ok(url: str) -> Callable[[], bool]:
    return lambda: requests.get(url, timeout=2).ok


def mlflow_environment(tracking_uri: str) -> dict[str, str]:
    """This environment with MLflow's command on the PATH and tracking into `tracking_uri`, and
    no run or experiment of a caller's (`mlflow run`, a test) to log into by mistake."""
    hidden = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    env = {key: value for key, value in os.environ.items() if key not in hidden}
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}"
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


@contextmanager
def tracking_server(folder: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `mlflow server` on 127.0.0.1 with one worker, its store and artifacts in `folder`:
    yields its URL and its process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        str(BIN / "mlflow"),
        "server",
        *("--backend-store-uri", f"sqlite:///{folder / 'server.db'}"),
        *("--artifacts-destination", (folder / "server-artifacts").as_uri()),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    # MLflow 3.17's server otherwise starts a job runner and seven huey consumers for its GenAI
    # jobs, about 20 s of CPU in the seconds after /health first answers, then polling: nothing
    # to do with the tracking calls measured here, and on 2 cores it would skew whatever runs
    # next.
    env = {**mlflow_environment(url), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with server(argv, env, folder / "tracking-server.log", http_ok(f"{url}/health")) as process:
        yield url, process


def experiment_store(folder: Path) -> Path:
    """A SQLite store holding the pipeline's experiment, its artifacts in `folder`; each run
    tracks into a copy of it, so that runs at once do not share one SQLite file."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking.runs import DEFAULT_EXPERIMENT

    store = folder / "store.db"
    MlflowClient(f"sqlite:///{store}").create_experiment(
        DEFAULT_EXPERIMENT, artifact_location=(folder / "mlruns").as_uri()
    )
    return store


def taking_turns(names: Sequence[str], repeats: int) -> list[tuple[str, int]]:
    """(name, repeat) for each repeat, the names taking turns: small, large, large, small, ..."""
    return [
        (name, repeat)
        for repeat in range(repeats)
        for name in (names if repeat % 2 == 0 else list(reversed(names)))
    ]
