"""A server the tests start in its own process group ends with the process that started it, also
when that process is killed with SIGKILL and cleans up nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.tracking_load import end_with_this_process

pytestmark = pytest.mark.fault

ROOT = Path(__file__).resolve().parents[2]

# An owner that starts a long "server" in a session of its own, as serve_script does, has it
# watched, says both pids, then waits to be killed.
OWNER = """
import subprocess, sys, time
from benchmarks.tracking_load import end_with_this_process
server = subprocess.Popen(["sleep", "300"], start_new_session=True)
watchdog = end_with_this_process(server.pid)
print(server.pid, watchdog.pid, flush=True)
time.sleep(300)
"""


def gone(pid: int, within: float) -> bool:
    """Whether `pid` has ended within `within` seconds: no such process, or a zombie waiting
    for a parent that is not this one (an orphan's is init, which may be slow to reap)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False


def test_the_server_group_ends_when_its_owner_is_killed() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    server, watchdog = map(int, owner.stdout.readline().split())
    try:
        time.sleep(1.5)  # the watchdog has looked at least once
        assert not gone(server, within=0.5)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert gone(server, within=20), "the server outlived its killed owner"
        assert gone(watchdog, within=5)
    finally:
        for pid in (server, watchdog):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_the_watchdog_ends_when_the_server_group_ends_first() -> None:
    server = subprocess.Popen(["sleep", "300"], start_new_session=True)
    watchdog = end_with_this_process(server.pid)
    os.killpg(server.pid, signal.SIGTERM)
    server.wait()
    watchdog.wait(timeout=10)  # raises if it stays: it must not outlive the group it watches
