"""Every test tracks into its own SQLite store and cache, and never into the project folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

MLFLOW_RUN_VARIABLES = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")


def tracking_environment(folder: Path) -> dict[str, str]:
    """Environment that tracks into `folder` and caches there too."""
    env = {key: value for key, value in os.environ.items() if key not in MLFLOW_RUN_VARIABLES}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    env["UNET_PERSON_CACHE"] = str(folder / "cache")
    return env


def last_run():
    """The newest run of the tests' experiment (the one an entry point just made)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("unet-person")
    (run, *_) = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"]
    )
    return run


def free_port() -> int:
    """A loopback port nobody listens on now, for servers the tests start."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def isolated_environment(folder: Path) -> dict[str, str]:
    """Environment for steps run as processes in the project folder, tracking into `folder`.

    The experiment is made here with its artifacts in `folder`: made by a step, it would put
    them in ./mlruns of the step's working folder, which is the project.
    """
    from mlflow.tracking import MlflowClient

    env = tracking_environment(folder)
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    if client.get_experiment_by_name("unet-person") is None:
        client.create_experiment("unet-person", artifact_location=(folder / "mlruns").as_uri())
    return env


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slowest files first, fault tests then other end-to-end ones: spread over
    pytest-xdist's workers from the start (`--dist loadfile --no-loadscope-reorder` keeps this
    order), they do not leave one worker running alone at the end."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("fault") is None,
            item.get_closest_marker("e2e") is None,
        )
    )


@pytest.fixture(autouse=True)
def isolated_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in MLFLOW_RUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # In the test's own folder, experiments made in-process keep their artifacts there too
    # (./mlruns); the store itself is made only by tests that track, as making it takes a second.
    monkeypatch.chdir(tmp_path)
    for name, value in tracking_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    import mlflow
    from mlflow.tracking import fluent

    # MLflow keeps the tracking URI and active experiment per process: forget the last test's.
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()
