"""`train` on two processes (Lightning DDP on the CPU, gloo), started by each launcher the README
names: Lightning itself (`--devices 2`), torchrun, and srun (SLURM, its variables set by hand).
Whatever starts them, the ranks report into one MLflow run that holds one value per epoch and one
model, only the first rank touches MLflow, and validation Dice is exact over the whole split."""

from __future__ import annotations

import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.data.cache import open_split
from pipeline.evaluation.metrics import hard_predictions, segmentation_metrics
from pipeline.model.inputs import to_model_input
from pipeline.orchestration.project import project_dir, step_command
from pipeline.training.module import SegmentationModule
from pipeline.training.ranks import LAUNCH_FOLDER
from tests.conftest import free_port, isolated_environment
from tests.training.caches import write_finished_cache

pytestmark = pytest.mark.e2e

SIDE = 32
# An odd val split over two ranks: a padding sampler would show it to one of them twice.
COUNTS = {"train": 16, "val": 5, "test": 2}
EPOCHS = 10
# Learns the cache's easy pattern in EPOCHS epochs of 4 steps (2 images per rank and step), so
# the Dice compared below is neither 0 nor 1.
SETTINGS = {
    "recipe": "paper",
    "base_channels": "4",
    "depth": "2",
    "batch_norm": "true",
    "loss": "bce_dice",
    "lr": "0.05",
    "batch_size": "2",
    "max_epochs": str(EPOCHS),
    "patience": "100",
    "accelerator": "cpu",
    "devices": "2",
    "strategy": "ddp",
    "num_workers": "0",
    "onnx": "false",
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_finished_cache(tmp_path_factory.mktemp("cache"), SIDE, COUNTS)


def train_arguments(cache: Path, folder: Path, **overrides: str) -> list[str]:
    """`train ...`: the MLproject's command with every parameter, less `python -m pipeline`."""
    params = {
        **SETTINGS,
        "data_dir": str(cache),
        "checkpoint_dir": str(folder / "checkpoints"),
        **overrides,
    }
    command = shlex.split(step_command("train", params))
    assert command[:4] == ["python", "-m", "pipeline", "train"]
    return command[3:]


def start(folder: Path, command: list[str], name: str, **env: str) -> tuple[subprocess.Popen, Path]:
    """A process in the project folder, tracking into `folder`, its output in a file."""
    log = folder / f"{name}.log"
    process = subprocess.Popen(
        command,
        cwd=project_dir(),
        env={**isolated_environment(folder), **env},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return process, log


def finish(process: subprocess.Popen, log: Path, timeout: float = 300) -> str:
    process.wait(timeout=timeout)
    output = log.read_text()
    assert process.returncode == 0, output
    return output


def client_for(folder: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=isolated_environment(folder)["MLFLOW_TRACKING_URI"])


def the_one_run(folder: Path) -> Run:
    """The experiment's only run, finished, with one value per epoch and one model: what a
    single process would have left."""
    client = client_for(folder)
    experiment = client.get_experiment_by_name("unet-person")
    (run,) = client.search_runs([experiment.experiment_id])  # no rank opened a second one
    assert run.info.status == "FINISHED"
    assert run.data.tags["unet_person.world_size"] == "2"
    assert run.data.tags["unet_person.global_batch"] == "4"
    for key in ("val_dice", "val_loss", "epoch_time_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert len(history) == EPOCHS, (key, history)
        assert len({metric.step for metric in history}) == EPOCHS, key
    assert len(client.search_logged_models([experiment.experiment_id])) == 1
    assert not list((folder / "checkpoints" / LAUNCH_FOLDER).glob("*"))  # cleaned up
    return run


def single_process_dice(checkpoint: Path, cache: Path) -> float:
    """Pooled val Dice of a checkpoint's network, all val images in one process."""
    net = SegmentationModule.from_checkpoint(checkpoint).net.eval()
    images, masks = (np.array(array) for array in open_split(cache, "val"))
    with torch.no_grad():
        logits = net(to_model_input(torch.from_numpy(images).permute(0, 3, 1, 2)))
    metrics = segmentation_metrics()
    metrics.update(hard_predictions(logits), torch.from_numpy(masks).unsqueeze(1))
    return float(metrics.compute()["dice"])


def test_lightning_launched_ranks_report_exact_metrics_into_one_run(
    cache: Path, tmp_path: Path
) -> None:
    process, log = start(
        tmp_path, [sys.executable, "-m", "pipeline", *train_arguments(cache, tmp_path)], "train"
    )
    output = finish(process, log)
    assert output.count("epoch 1/") == 1  # the other rank prints no summary of its own
    run = the_one_run(tmp_path)
    best_val_dice = run.data.metrics["best_val_dice"]
    assert 0 < best_val_dice < 1
    checkpoint = tmp_path / "checkpoints" / run.info.run_id / "best.ckpt"
    assert single_process_dice(checkpoint, cache) == pytest.approx(best_val_dice, abs=1e-6)


def test_torchrun_ranks_find_the_run_of_rank_0(cache: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [
        str(torchrun),
        "--nnodes", "1", "--nproc-per-node", "2",
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}",
        "-m", "pipeline", *train_arguments(cache, tmp_path),
    ]  # fmt: skip
    finish(*start(tmp_path, command, "torchrun"))
    the_one_run(tmp_path)


def test_srun_ranks_find_the_run_of_rank_0(cache: Path, tmp_path: Path) -> None:
    """Two tasks as `srun --ntasks-per-node 2` starts them, with the variables Lightning's
    SLURMEnvironment reads; the other rank learns the run from a file under checkpoint_dir."""
    job = {
        "SLURM_JOB_ID": str(random.randrange(10**6, 10**7)),
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_NAME": "unet-person",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_NNODES": "1",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "127.0.0.1",
        "MASTER_PORT": str(free_port()),  # else Lightning derives it from the job id
    }
    command = [sys.executable, "-m", "pipeline", *train_arguments(cache, tmp_path)]
    tasks = [
        start(
            tmp_path, command, f"task{rank}", **job, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank)
        )
        for rank in (1, 0)  # the other rank first: it waits for rank 0's file
    ]
    for task in tasks:
        finish(*task)
    the_one_run(tmp_path)


def checkpoint_epoch(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["epoch"]
    except (OSError, RuntimeError, EOFError):  # not there yet, or caught mid-write
        return -1


def children_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(status.parent.name))
    return found


def gone(pid: int) -> bool:
    """Ended (a zombie left for its dead parent's reaper counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def rank_0_past(folder: Path, arguments: list[str], epoch: int, name: str, **env: str):
    """Rank 0 of a fresh launch, once the run's last checkpoint is past `epoch`, and its rank 1."""
    rank_0, log = start(folder, [sys.executable, "-m", "pipeline", *arguments], name, **env)
    deadline = time.monotonic() + 180
    while not any(
        checkpoint_epoch(path) > epoch for path in (folder / "checkpoints").glob("*/last.ckpt")
    ):
        assert rank_0.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    (rank_1,) = children_of(rank_0.pid)
    return rank_0, log, rank_1


def wait_until_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while not gone(pid):
        assert time.monotonic() < deadline, f"rank 1 (pid {pid}) outlived rank 0"
        time.sleep(0.1)


@pytest.mark.fault
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG, /proc")
def test_stopped_or_killed_rank_0_ends_its_ranks_and_the_run_resumes(
    cache: Path, tmp_path: Path
) -> None:
    """SIGTERM (`docker stop`, a stopped `main`) ends every rank after the same step and fails
    the run; kill -9 of rank 0 takes rank 1 along instead of leaving it in a collective; and
    the run, given again as MLFLOW_RUN_ID, resumes from its checkpoint each time."""
    epochs = 30  # a tenth of a second each: enough of them to stop rank 0 twice mid-fit
    arguments = train_arguments(cache, tmp_path, max_epochs=str(epochs), patience=str(10 * epochs))
    rank_0, log, rank_1 = rank_0_past(tmp_path, arguments, 1, "stopped")
    rank_0.send_signal(signal.SIGTERM)
    rank_0.wait(timeout=120)
    assert rank_0.returncode == 2, log.read_text()
    assert "train: error: training was stopped (SIGTERM)" in log.read_text()
    wait_until_gone(rank_1)
    (checkpoint,) = (tmp_path / "checkpoints").glob("*/last.ckpt")
    run_id = checkpoint.parent.name
    client = client_for(tmp_path)
    assert client.get_run(run_id).info.status == "FAILED"

    stopped_at = checkpoint_epoch(checkpoint)
    rank_0, log, rank_1 = rank_0_past(
        tmp_path, arguments, stopped_at + 1, "killed", MLFLOW_RUN_ID=run_id
    )
    rank_0.send_signal(signal.SIGKILL)
    rank_0.wait(timeout=30)
    wait_until_gone(rank_1)

    again, log = start(
        tmp_path, [sys.executable, "-m", "pipeline", *arguments], "resumed", MLFLOW_RUN_ID=run_id
    )
    output = finish(again, log)
    assert "Restoring states from the checkpoint path" in output
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["epochs_trained"] == epochs
    # Resumed, not restarted, and nothing logged twice.
    assert len(client.get_metric_history(run_id, "epoch_time_s")) == epochs
