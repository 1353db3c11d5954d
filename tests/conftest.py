"""Every test tracks into its own SQLite store and cache, and never into the project folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MLFLOW_RUN_VARIABLES = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def isolated_environment(folder: Path) -> dict[str, str]:
    """Environment for a process that tracks into `folder` and caches there too.

    The experiment is made here with its artifacts in `folder`: made by a step, it would put
    them in ./mlruns of the step's working folder, which is the project.
    """
    from mlflow.tracking import MlflowClient

    env = {key: value for key, value in os.environ.items() if key not in MLFLOW_RUN_VARIABLES}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    env["UNET_PERSON_CACHE"] = str(folder / "cache")
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    if client.get_experiment_by_name("unet-person") is None:
        client.create_experiment("unet-person", artifact_location=(folder / "mlruns").as_uri())
    return env


@pytest.fixture(autouse=True)
def isolated_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in MLFLOW_RUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in isolated_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    import mlflow
    from mlflow.tracking import fluent

    # MLflow keeps the tracking URI and active experiment per process: forget the last test's.
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()
