"""Which MLflow run the processes of a distributed fit report into.

Every rank runs the same `python -m pipeline train ...` command. The first (global rank 0) owns
the run as a single process does; the others open no run and log nothing, but need its id:
checkpoints live in checkpoint_dir/<run id>, and a resumed fit loads the same last.ckpt on every
rank. A rank learns the id from the first of these that applies:
1. MLFLOW_RUN_ID, when the launch sets it for every rank (`mlflow run`, `main`, a person resuming
   a run); the first rank also sets it for the ranks Lightning's own launcher starts;
2. under torchrun, the launch's key-value store (its agent's TCPStore at MASTER_ADDR:MASTER_PORT,
   new for every launch and restart), where the first rank puts it;
3. under srun (SLURM), a file in checkpoint_dir/launches/ named by the job, step and restart,
   which the first rank writes and removes after its fit (checkpoint_dir is on storage every
   node sees, as resuming needs anyway).
Otherwise the rank stops with an error that says to set MLFLOW_RUN_ID.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from pipeline.errors import PipelineError
from pipeline.processes import PARENT_PID_VARIABLE, rank_variables

RUN_ID_VARIABLE = "MLFLOW_RUN_ID"
LAUNCH_FOLDER = "launches"
STORE_KEY = "unet_person/run_id"
# How long a rank waits for the first to open the run: it may wait out a tracking server's
# outage within the MLflow client's retries, or download the data first.
WAIT_SECONDS = 600.0
POLL_SECONDS = 0.5


@contextmanager
def sharing_run(run_id: str, checkpoint_root: Path) -> Iterator[None]:
    """On the first rank: tell this launch's other ranks the run, for as long as the `with` lasts.

    Ranks that Lightning's launcher starts inherit the environment: they get the run id, and the
    parent-death watch (pipeline/processes.py) that ends them if this process is
    killed, rather than leaving them waiting in a collective for a peer that is gone.
    """
    exported = {RUN_ID_VARIABLE: run_id, PARENT_PID_VARIABLE: str(os.getpid())}
    previous = {name: os.environ.get(name) for name in exported}
    os.environ.update(exported)
    if (store := _launch_store()) is not None:
        store.set(_store_key(), run_id)
    launch_file = _launch_file(checkpoint_root)
    if launch_file is not None:
        launch_file.parent.mkdir(parents=True, exist_ok=True)
        partial = launch_file.with_suffix(".part")
        partial.write_text(run_id)
        partial.replace(launch_file)  # readers never see half a run id
    try:
        yield
    finally:
        if launch_file is not None:
            launch_file.unlink(missing_ok=True)
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_id_of_launch(checkpoint_root: Path) -> str:
    """On any other rank: the id of the run the first rank reports into."""
    if given := os.environ.get(RUN_ID_VARIABLE):
        return given
    waiting = (
        f"this rank ({rank_variables()}) waited {WAIT_SECONDS:.0f} s for rank 0 to open its "
        "MLflow run; see rank 0's error, or set MLFLOW_RUN_ID to one run's id for every rank"
    )
    try:
        if (store := _launch_store()) is not None:
            return store.get(_store_key()).decode()
    except dist.DistError as error:  # the store is gone, or rank 0 never put the id there
        raise PipelineError(f"{waiting} ({error})") from error
    launch_file = _launch_file(checkpoint_root)
    if launch_file is None:
        raise PipelineError(
            f"this rank ({rank_variables()}) of a distributed train does not know the MLflow run "
            "to report into: set MLFLOW_RUN_ID to the same run id for every rank (create the "
            "run first, e.g. with MlflowClient().create_run), or launch with torchrun or srun, "
            "whose ranks share it by themselves"
        )
    deadline = time.monotonic() + WAIT_SECONDS
    while not launch_file.is_file():
        if time.monotonic() > deadline:
            raise PipelineError(f"{waiting} (it writes {launch_file})")
        time.sleep(POLL_SECONDS)
    return launch_file.read_text()


def _launch_store() -> dist.TCPStore | None:
    """torchrun's store for this launch, which its agent hosts before any rank starts."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None
    return dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=WAIT_SECONDS),
    )


def _store_key() -> str:
    """The key of this attempt: torchrun keeps its store across restarts of the workers."""
    return f"{STORE_KEY}/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def _launch_file(checkpoint_root: Path) -> Path | None:
    """The file that names the run of this srun launch, None outside one."""
    if "SLURM_JOB_ID" not in os.environ or "SLURM_PROCID" not in os.environ:
        return None
    names = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT")
    launch = ".".join(os.environ.get(name, "0") for name in names)
    return checkpoint_root / LAUNCH_FOLDER / f"slurm-{launch}"
