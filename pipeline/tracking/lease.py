"""Which RUNNING runs still have a live process behind them, and closing those that do not.

A run whose process dies by SIGKILL, the OOM killer, `docker kill` or a reboot never ends
itself: MLflow would show it RUNNING forever, and `main` would not know it can resume it. So
every step holds a lease on its run while it works:
- a file lock in the cache's `leases/` folder (pipeline/locks.py), which the kernel releases the
  moment the process dies: for a process on this machine, or one sharing that folder, whether
  it lives is known for certain;
- a heartbeat tag on the run, renewed every HEARTBEAT_SECONDS, for a process elsewhere: its run
  is taken as gone once the heartbeat is older than LEASE_SECONDS.
Runs without a heartbeat tag were not started by this pipeline and are never touched.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from pipeline import locks
from pipeline.processes import is_rank_zero
from pipeline.tracking.artifacts import cache_root
from pipeline.tracking.tags import CLOSED_TAG, HEARTBEAT_TAG

log = logging.getLogger("unet_person")

HEARTBEAT_SECONDS = float(os.environ.get("UNET_PERSON_HEARTBEAT_SECONDS", "30"))
LEASE_SECONDS = 4 * HEARTBEAT_SECONDS


def lease_file(run_id: str) -> Path:
    return cache_root() / "leases" / f"{run_id}.lock"


def heartbeat_tag() -> dict[str, str]:
    """The tag that says "alive now"; also set on runs created for a step about to start."""
    return {HEARTBEAT_TAG: f"{time.time():.0f}"}


@contextmanager
def lease(client: MlflowClient, run_id: str) -> Iterator[None]:
    """Hold the run's lease for the body of the `with`: its lock, and a heartbeat meanwhile."""
    if not is_rank_zero():
        yield
        return
    with locks.hold(lease_file(run_id), timeout=0, purpose=f"run {run_id} is being worked on"):
        stop = threading.Event()
        beating = threading.Thread(
            target=_beat, args=(client, run_id, stop), name="heartbeat", daemon=True
        )
        beating.start()
        try:
            yield
        finally:
            stop.set()
            lease_file(run_id).unlink(missing_ok=True)


def _beat(client: MlflowClient, run_id: str, stop: threading.Event) -> None:
    """Renew the heartbeat until told to stop; while the store is away, retry every few seconds
    so the heartbeat is fresh again as soon as it is back."""
    while True:
        try:
            client.set_tag(run_id, HEARTBEAT_TAG, heartbeat_tag()[HEARTBEAT_TAG])
            pause = HEARTBEAT_SECONDS
        except Exception:  # an outage: the journal reports it; the heartbeat just keeps trying
            pause = min(5.0, HEARTBEAT_SECONDS)
        if stop.wait(pause):
            return


def why_abandoned(run: Run, now: float | None = None) -> str | None:
    """The reason `run` (RUNNING, with a heartbeat tag) has no live process, or None if it has."""
    held = locks.is_held(lease_file(run.info.run_id))
    if held is not None:
        return None if held else "its process is gone (its lease lock is free)"
    age = (now or time.time()) - float(run.data.tags[HEARTBEAT_TAG])
    if age > LEASE_SECONDS:
        return f"no heartbeat for {age:.0f} s (a live step renews it every {HEARTBEAT_SECONDS:g} s)"
    return None


def close_abandoned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark KILLED every RUNNING run of this pipeline in the experiment whose process is gone;
    returns their ids. A killed train run can then be resumed from its checkpoint."""
    running = client.search_runs(
        [experiment_id],
        f"attributes.status = '{RunStatus.to_string(RunStatus.RUNNING)}'",
        max_results=1000,
    )
    closed = []
    for run in running:
        if HEARTBEAT_TAG not in run.data.tags or not (reason := why_abandoned(run)):
            continue
        run_id = run.info.run_id
        client.set_tag(run_id, CLOSED_TAG, reason)
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        lease_file(run_id).unlink(missing_ok=True)
        log.warning("run %s was left RUNNING, but %s: marked KILLED", run_id, reason)
        closed.append(run_id)
    return closed
