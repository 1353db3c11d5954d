"""Several `main`s started at once in a fresh folder, as a shell loop over seeds with `&` starts
them (issue 28): before the store was made under a lock, all of them died inside MLflow's
migration of the new ./mlflow.db and left it half-made for every later command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.orchestration.project import project_dir
from pipeline.tracking.tags import MODEL_VERSION_TAG

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

MAINS = 4


def test_four_mains_started_together_in_a_fresh_folder_all_finish(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["UNET_PERSON_CACHE"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = str(project_dir())
    shared = {
        "source": "synthetic:16",
        "image_size": "32",
        "base_channels": "4",
        "depth": "1",
        "max_epochs": "2",
        "batch_size": "8",
        "num_workers": "0",
        "onnx": "false",
        "raw_dir": str(tmp_path / "raw"),
        "processed_dir": str(tmp_path / "processed"),
        "checkpoint_dir": str(tmp_path / "checkpoints"),
    }
    started = []
    for seed in range(1, MAINS + 1):
        words = [f"--{name}={value}" for name, value in {**shared, "seed": str(seed)}.items()]
        log = tmp_path / f"main-{seed}.log"
        started.append(
            (
                log,
                subprocess.Popen(
                    [sys.executable, "-m", "pipeline", "main", *words],
                    cwd=fresh,
                    env=env,
                    stdout=log.open("w"),
                    stderr=subprocess.STDOUT,
                ),
            )
        )
    for log, process in started:
        assert process.wait(timeout=900) == 0, log.read_text()[-4000:]

    # The store works afterwards, and holds every main's runs.
    client = MlflowClient(tracking_uri=f"sqlite:///{fresh / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("unet-person")
    runs = client.search_runs([experiment.experiment_id])
    by_entry_point: dict[str, list] = {}
    for run in runs:
        by_entry_point.setdefault(run.data.tags["mlflow.project.entryPoint"], []).append(run)
    assert len(by_entry_point["main"]) == MAINS
    assert len(by_entry_point["train"]) == MAINS  # one per seed: none reused, none lost
    assert {run.info.status for run in runs} == {"FINISHED"}
    promotes = by_entry_point["promote"]
    assert len(promotes) == MAINS
    assert any(MODEL_VERSION_TAG in run.data.tags for run in promotes)
    assert not list(tmp_path.glob("*/.*staging-*"))
