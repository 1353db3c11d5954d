"""A training step stopped half-way (SIGTERM, as `docker stop` sends) loses nothing: the next
`main` resumes the same run from its last checkpoint instead of starting over."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.orchestration.project import project_dir, step_command
from tests.conftest import isolated_environment

pytestmark = pytest.mark.e2e


MAX_EPOCHS = 60  # epochs take tens of milliseconds: enough of them to stop one mid-run


@dataclass
class Started:
    """A command started in the background; its output goes to a file, never to a pipe that a
    test might not drain (a full pipe would stall the command and its steps)."""

    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def finish(self, timeout: float) -> tuple[int, str]:
        self.process.wait(timeout=timeout)
        return self.process.returncode, self.output()


def main_process(
    folder: Path,
    entry_point: str = "main",
    new_session: bool = False,
    env: dict[str, str] | None = None,
    **overrides: str,
) -> Started:
    """`main` (or `entry_point`) on a tiny synthetic set; `new_session` gives it its own process
    group, as `setsid` does, so the whole group can be killed at once; `env` adds variables."""
    params = {
        "source": "synthetic:24",
        "image_size": "32",
        "base_channels": "4",
        **({"depth": "1"} if entry_point == "main" else {}),  # ablate varies depth itself
        "max_epochs": str(MAX_EPOCHS),
        "patience": str(10 * MAX_EPOCHS),
        "batch_size": "8",
        "num_workers": "0",
        "raw_dir": str(folder / "raw"),
        "processed_dir": str(folder / "processed"),
        "checkpoint_dir": str(folder / "checkpoints"),
        "onnx": "false",  # a third of a tiny train step, and nothing here reads it
        **overrides,
    }
    return start_entry_point(folder, entry_point, params, new_session, env)


def start_entry_point(
    folder: Path,
    entry_point: str,
    params: dict[str, str],
    new_session: bool = False,
    env: dict[str, str] | None = None,
) -> Started:
    """An entry point's MLproject command, tracking into `folder`, its output in a log there."""
    command = shlex.split(step_command(entry_point, params))
    log = folder / f"{entry_point}-{len(list(folder.glob(f'{entry_point}-*.log')))}.log"
    process = subprocess.Popen(
        [sys.executable, *command[1:]],
        cwd=project_dir(),
        env={**isolated_environment(folder), **(env or {})},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=new_session,
    )
    return Started(process, log)


def checkpoint_epoch(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]


def wait_for_checkpoint(folder: Path, started: Started, timeout: float, min_epoch: int = 1) -> Path:
    """The last checkpoint, once it is past `min_epoch` (so resuming must skip epochs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for found in (folder / "checkpoints").glob("*/last.ckpt"):
            try:
                if checkpoint_epoch(found) >= min_epoch:
                    return found
            except (OSError, RuntimeError, EOFError):  # caught mid-write
                pass
        assert started.process.poll() is None, started.output()
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint past epoch {min_epoch} appeared")


def test_stopped_training_is_resumed_by_the_next_main(tmp_path: Path) -> None:
    first = main_process(tmp_path)
    checkpoint = wait_for_checkpoint(tmp_path, first, timeout=240)
    first.process.send_signal(signal.SIGTERM)
    returncode, output = first.finish(timeout=120)
    assert returncode == 2, output
    assert "stopped (SIGTERM)" in output
    run_id = checkpoint.parent.name
    client = MlflowClient(tracking_uri=isolated_environment(tmp_path)["MLFLOW_TRACKING_URI"])
    stopped = client.get_run(run_id)
    assert stopped.info.status == "FAILED"
    epochs_before = len(client.get_metric_history(run_id, "epoch_time_s"))
    assert 0 < epochs_before < MAX_EPOCHS
    restored_epoch = checkpoint_epoch(checkpoint)
    assert restored_epoch >= 1

    returncode, output = main_process(tmp_path).finish(timeout=600)
    assert returncode == 0, output
    assert f"train: resuming interrupted run {run_id}" in output
    assert "Restoring states from the checkpoint path" in output
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED"
    assert resumed.data.metrics["epochs_trained"] == MAX_EPOCHS
    epochs_after = len(client.get_metric_history(run_id, "epoch_time_s"))
    # Resumed, not restarted, and nothing logged twice: a restart would log all MAX_EPOCHS after
    # the ones before the stop.
    assert epochs_after == MAX_EPOCHS


def test_a_stopped_study_stops_instead_of_going_on_to_the_next_variant(tmp_path: Path) -> None:
    study = main_process(
        tmp_path, "ablate", variants="paper", seeds="1,2", output_dir=str(tmp_path / "study")
    )
    wait_for_checkpoint(tmp_path, study, timeout=240)
    study.process.send_signal(signal.SIGTERM)
    returncode, output = study.finish(timeout=120)
    assert returncode == 2, output
    assert "ablate: error: step train was stopped (SIGTERM" in output
    client = MlflowClient(tracking_uri=isolated_environment(tmp_path)["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("unet-person")
    runs = client.search_runs([experiment.experiment_id])
    trains = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "train"]
    assert [r.info.status for r in trains] == ["FAILED"]  # the one stopped; no second started
    (parent,) = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "ablate"]
    assert parent.info.status == "FAILED"
    assert not (tmp_path / "study").exists()
