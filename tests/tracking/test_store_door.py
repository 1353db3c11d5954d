"""Every tracking URI is checked at the door, before any run opens: a typo, a database that is
down or lacks its driver, a SQLite folder that is missing or read-only, a server that is not
MLflow. Each is one line and exit code 2 within seconds, and shows no password. A fresh SQLite
store is made once however many steps start at once, and an empty required parameter is
refused before any run exists."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.entrypoints.runner import run_entry_point
from pipeline.errors import TRACKING_AWAY_EXIT
from pipeline.params import DownloadParams, parameter, parameters
from pipeline.tracking.runs import DEFAULT_EXPERIMENT, masked, tracking_uri
from tests.conftest import free_port
from tests.filesystems import tmpfs
from tests.stack.stack import Database, postgres_settings
from tests.test_mlproject import PARAMS

DOOR_SECONDS = 15  # refused within this (issue 28), not after MLflow's ~100 s of retries


def download(folder: Path, uri: str | None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m pipeline download` of a small synthetic set in `folder`, tracking into `uri`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    argv = ["--source", "synthetic:4", "--output_dir", str(folder / "raw"), "--log_data", "false"]
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "download", *argv],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_an_unknown_scheme_is_one_line_and_no_run(tmp_path: Path) -> None:
    result = download(tmp_path, "htp://typo")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()  # one line, no traceback
    assert line.startswith("download: error: MLFLOW_TRACKING_URI=htp://typo is not a tracking")
    assert "sqlite:///path/mlflow.db" in line and "unset MLFLOW_TRACKING_URI" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no store, no data


@pytest.mark.parametrize("scheme", ["postgresql+psycopg2", "postgresql"])
def test_a_database_that_is_down_is_one_line_in_seconds_without_its_password(
    scheme: str, tmp_path: Path
) -> None:
    password = f"Leak{uuid.uuid4().hex}"
    uri = f"{scheme}://mlflow:{password}@127.0.0.1:{free_port()}/mlflow"
    started = time.monotonic()
    result = download(tmp_path, uri, timeout=60)
    assert time.monotonic() - started < DOOR_SECONDS
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()  # one line, no traceback
    assert "download: error: cannot reach the database of MLFLOW_TRACKING_URI=" in line
    assert "mlflow:***@127.0.0.1" in line and "start it, or fix the URI" in line
    assert password not in result.stderr + result.stdout
    assert not (tmp_path / "raw").exists()


def test_a_missing_driver_names_the_package_to_install(monkeypatch, capsys) -> None:
    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg 3 is installed here")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql+psycopg://u:pw@127.0.0.1:1/db")
    assert run_entry_point("download", DownloadParams, must_not_run, []) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "needs the database driver psycopg, which is not installed" in line
    assert "unet-person[postgres]" in line and ":pw@" not in line


def test_a_bare_postgresql_uri_tracks_into_the_database(database: Database, tmp_path) -> None:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3, which the project does not ship."""
    server = postgres_settings()
    uri = f"postgresql://{server['user']}@{server['host']}:{server['port']}/{database.name}"
    if server["host"].startswith("/"):  # PGHOST a socket folder
        uri = f"postgresql://{server['user']}@/{database.name}?host={server['host']}"
        uri += f"&port={server['port']}"
    result = download(tmp_path, uri)
    assert result.returncode == 0, result.stderr
    client = MlflowClient(tracking_uri=database.uri)
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["source"] == "synthetic:4"


def test_a_bare_postgresql_uri_names_psycopg2_for_the_steps_it_starts(monkeypatch) -> None:
    if importlib.util.find_spec("psycopg") is not None:
        pytest.skip("psycopg 3 is installed: SQLAlchemy's own reading of postgresql:// works")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow@db:5432/mlflow")
    assert tracking_uri() == "postgresql+psycopg2://mlflow@db:5432/mlflow"


def must_not_run(params) -> None:
    raise AssertionError("the step ran although the tracking store was refused")


def test_a_sqlite_store_in_a_missing_folder_is_refused(monkeypatch, tmp_path, capsys) -> None:
    folder = tmp_path / "no" / "such"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    assert run_entry_point("download", DownloadParams, must_not_run, []) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"the folder {folder} of the tracking store" in line
    assert "does not exist: create it, or fix the URI" in line
    assert not (tmp_path / "no").exists()


@contextmanager
def read_only_folder(folder: Path) -> Iterator[Path]:
    """A folder nobody may write to: for root (whom modes do not stop), a read-only tmpfs."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield folder
        finally:
            folder.chmod(0o700)
        return
    with tmpfs(folder, "ro,size=1m"):
        yield folder


def test_a_sqlite_store_in_a_read_only_folder_is_refused(monkeypatch, tmp_path, capsys) -> None:
    with read_only_folder(tmp_path / "read-only") as folder:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        assert run_entry_point("download", DownloadParams, must_not_run, []) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"the folder {folder} of the tracking store" in line
    assert "is not writable" in line and "make it writable, or fix the URI" in line


class NotMlflow(BaseHTTPRequestHandler):
    """Says it is healthy, then answers the MLflow API with a 404 or a web page."""

    api_answer = 404

    def do_GET(self) -> None:
        healthy = self.path == "/health"
        status = 200 if healthy else self.api_answer
        body = b"OK" if healthy else b"<html><body>a web page</body></html>"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if healthy else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("api_answer", [404, 200])
def test_a_server_that_is_not_mlflow_is_refused(api_answer: int, monkeypatch, capsys) -> None:
    handler = type("Handler", (NotMlflow,), {"api_answer": api_answer})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        started = time.monotonic()
        assert run_entry_point("download", DownloadParams, must_not_run, []) == 2
        assert time.monotonic() - started < DOOR_SECONDS
    finally:
        server.shutdown()
        server.server_close()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"download: error: the server at {url} answers but is not an MLflow tracking server: "
        "check host and port of MLFLOW_TRACKING_URI"
    )


def test_a_server_password_in_the_uri_is_never_shown(monkeypatch, capsys) -> None:
    password = f"Leak{uuid.uuid4().hex}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{password}@127.0.0.1:{free_port()}")
    assert run_entry_point("download", DownloadParams, must_not_run, []) == TRACKING_AWAY_EXIT
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "cannot reach the MLflow tracking server at http://alice:***@127.0.0.1:" in line
    assert password not in line


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("postgresql+psycopg2://u:pw@h:5432/db", "postgresql+psycopg2://u:***@h:5432/db"),
        ("https://u:test%40pw@host/prefix?x=1", "https://u:***@host/prefix?x=1"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ],
)
def test_masked_hides_only_the_password(uri: str, shown: str) -> None:
    assert masked(uri) == shown


GO_WHEN = """
import pathlib, sys, time
import pipeline.entrypoints.download  # imports done: only the race is left
from pipeline.__main__ import main
ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.002)
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.fault
def test_steps_starting_at_once_make_one_default_store(tmp_path: Path) -> None:
    """Four steps started together on no store, each making ./mlflow.db: without the lock they
    ran MLflow's migrations at once and one failed every time in 14 tries (`table tags already
    exists`, `duplicate column name: step`, `Online migration expected to match one row`)."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    steps = []
    for index in range(4):
        argv = ["--source", "synthetic:4", "--output_dir", f"raw-{index}", "--log_data", "false"]
        steps.append(
            subprocess.Popen(
                [sys.executable, "-c", GO_WHEN, f"ready-{index}", "go", "download", *argv],
                cwd=fresh,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    deadline = time.monotonic() + 120
    while not all((fresh / f"ready-{index}").exists() for index in range(4)):
        assert time.monotonic() < deadline, "the steps did not get ready"
        time.sleep(0.01)
    (fresh / "go").touch()  # the barrier: all four go at once
    outputs = [step.communicate(timeout=300)[0] for step in steps]
    for step, output in zip(steps, outputs, strict=True):
        assert step.returncode == 0, output
    client = MlflowClient(tracking_uri=f"sqlite:///{fresh / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.status for run in runs) == ["FINISHED"] * 4
    assert client.search_registered_models() == []  # the registry's tables are whole too


REQUIRED = [
    (entry_point, spec.name)
    for entry_point, params_class in sorted(PARAMS.items())
    for spec in parameters(params_class)
    if spec.required
]


def test_the_required_parameters_are_the_ones_expected() -> None:
    """The list below comes from the declarations; this only shows it is not empty."""
    assert {("evaluate", "model_uri"), ("promote", "model_uri"), ("predict", "input_dir")} <= set(
        REQUIRED
    )


@pytest.mark.parametrize("given", ["", "  ", "''"], ids=["empty", "blank", "shell-quoted"])
@pytest.mark.parametrize(("entry_point", "name"), REQUIRED, ids=[f"{e}-{n}" for e, n in REQUIRED])
def test_an_empty_required_parameter_is_refused_before_any_run(
    entry_point: str, name: str, given: str, tmp_path: Path, capsys
) -> None:
    params_class = PARAMS[entry_point]
    argv = []
    for spec in parameters(params_class):
        if spec.required:
            argv += [f"--{spec.name}", given if spec.name == name else "something"]
    module = importlib.import_module(f"pipeline.entrypoints.{entry_point}")
    assert module.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"{entry_point}: error: parameter {name} is required but was given empty: give "
        f"{parameter(params_class, name).help}"
    )
    assert not (tmp_path / "mlflow.db").exists()  # no run was opened, not even a failed one
