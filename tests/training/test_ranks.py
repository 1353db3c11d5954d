"""How the other ranks of a distributed train learn the run of the first, and what they refuse.
The launches themselves run in test_ddp.py; these are the edges, in one process."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from pipeline.entrypoints import download
from pipeline.errors import PipelineError
from pipeline.processes import PARENT_PID_VARIABLE
from pipeline.training import ranks
from pipeline.training.ranks import LAUNCH_FOLDER, run_id_of_launch, sharing_run
from tests.conftest import free_port

LAUNCH_VARIABLES = (
    "RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_JOB_ID", "SLURM_STEP_ID",
    "SLURM_RESTART_COUNT", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT",
    "MASTER_ADDR", "MASTER_PORT", PARENT_PID_VARIABLE,
)  # fmt: skip


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_a_rank_without_any_way_to_the_run_says_to_set_mlflow_run_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(PipelineError, match=r"\(RANK=1\).*set MLFLOW_RUN_ID to the same run id"):
        run_id_of_launch(tmp_path)
    monkeypatch.setenv("MLFLOW_RUN_ID", "given")
    assert run_id_of_launch(tmp_path) == "given"


def test_srun_ranks_share_the_run_through_a_file_that_goes_with_the_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "3", "SLURM_PROCID": "0"}.items():
        monkeypatch.setenv(name, value)
    with sharing_run("abc123", tmp_path):
        assert os.environ["MLFLOW_RUN_ID"] == "abc123"  # for ranks Lightning starts
        assert os.environ[PARENT_PID_VARIABLE] == str(os.getpid())
        os.environ.pop("MLFLOW_RUN_ID")  # as a rank srun started sees it
        monkeypatch.setenv("SLURM_PROCID", "1")
        assert run_id_of_launch(tmp_path) == "abc123"
        assert (tmp_path / LAUNCH_FOLDER / "slurm-77.3.0").read_text() == "abc123"
        monkeypatch.setenv("SLURM_PROCID", "0")
    assert not list((tmp_path / LAUNCH_FOLDER).iterdir())
    assert "MLFLOW_RUN_ID" not in os.environ and PARENT_PID_VARIABLE not in os.environ


def test_an_srun_rank_stops_waiting_for_rank_0_with_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ranks, "WAIT_SECONDS", 0.3)
    for name, value in {"SLURM_JOB_ID": "78", "SLURM_PROCID": "1"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(PipelineError, match="waited 0 s for rank 0 to open its MLflow run"):
        run_id_of_launch(tmp_path)


def test_torchrun_ranks_share_the_run_through_the_launch_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    # What torchrun's agent hosts before it starts the ranks.
    agent = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10))
    for name, value in {
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RESTART_COUNT": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }.items():
        monkeypatch.setenv(name, value)
    with sharing_run("def456", tmp_path):
        os.environ.pop("MLFLOW_RUN_ID")
        monkeypatch.setenv("RANK", "1")
        assert run_id_of_launch(tmp_path) == "def456"
    assert agent.get("unet_person/run_id/attempt_1") == b"def456"


def test_steps_other_than_train_refuse_to_run_as_another_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert download.main(["--source", "synthetic:3", "--output_dir", str(tmp_path / "raw")]) == 2
    assert "(LOCAL_RANK=1); only train runs distributed" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # no run was opened
