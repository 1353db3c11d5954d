"""A step whose `main` is killed gets exactly one SIGTERM: the kernel's parent-death signal comes
once per thread of the dying parent, and a second SIGTERM after Lightning has put back the
default handler would kill the step before it ends its run (it then stayed RUNNING)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")

STEP = textwrap.dedent(
    """
    import os, signal, sys, time
    from pipeline.processes import die_with_parent
    terms = []
    signal.signal(signal.SIGTERM, lambda *_: terms.append(time.monotonic()))
    die_with_parent()
    open(sys.argv[1] + ".ready", "w").close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (terms and time.monotonic() - terms[0] > 2):
        time.sleep(0.05)
    open(sys.argv[1] + ".part", "w").write(str(len(terms)))
    os.replace(sys.argv[1] + ".part", sys.argv[1])
    """
)

# A `main` stand-in with several threads alive, as the real one has (heartbeat, MLflow's own).
PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, threading, time
    for _ in range(4):
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    env = {**os.environ, "UNET_PERSON_PARENT_PID": str(os.getpid())}
    subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], env=env)
    time.sleep(600)
    """
)


def test_a_killed_parent_stops_its_step_with_one_sigterm(tmp_path: Path) -> None:
    report = tmp_path / "terms"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, STEP, str(report)], cwd=os.getcwd())
    deadline = time.monotonic() + 60
    while not Path(f"{report}.ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Path(f"{report}.ready").exists()
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    while not report.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert report.read_text() == "1"


# A rank Lightning started, stuck where no Python handler runs: only the kernel can end it.
RANK = textwrap.dedent(
    """
    import os, signal, sys, time
    from pipeline.processes import die_with_parent
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    open(sys.argv[1], "w").write(str(os.getpid()))
    time.sleep(600)
    """
)


def ended(pid: int) -> bool:
    """Gone, or a zombie that only its new parent's reaping would remove."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_killed_first_rank_kills_the_ranks_it_started(tmp_path: Path) -> None:
    report = tmp_path / "pid"
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, RANK, str(report)],
        cwd=os.getcwd(),
        env={**os.environ, "LOCAL_RANK": "1"},
    )
    deadline = time.monotonic() + 60
    while not (report.exists() and report.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    rank = int(report.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    while not ended(rank) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ended(rank)
