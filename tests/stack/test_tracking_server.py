"""The stack's runtime parts as real processes: the MLflow server started by the same script
compose runs (docker/mlflow-server.sh), metadata in a fresh database of this machine's
PostgreSQL, artifacts in an S3 bucket served by moto. `main` runs against it; then the bucket
(through boto3) and the database (through SQL) must hold what the runs logged.

The server's databases belong to a role with a password, given as PGPASSWORD the way compose
gives it: this machine's PostgreSQL trusts local connections and ignores it, but the server holds
a real secret, which no command line of its processes may show.
"""

from __future__ import annotations

import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import mlflow
import pytest
import requests
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from benchmarks.tracking_load import PARAMS, Load, postgres_settings, run_load
from tests.conftest import free_port
from tests.s3 import S3_CREDENTIALS, lower
from tests.segmenters import constant_net, log_model
from tests.stack.stack import (
    SERVER_SCRIPT,
    Database,
    Role,
    Server,
    client_environment,
    fresh_database,
    run_entry_point,
    server_environment,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, server: Server) -> dict[str, str]:
    """`main` on a small synthetic set, tracked by the server; returns run ids by entry point."""
    folder = tmp_path_factory.mktemp("client")
    params = {
        "source": "synthetic:24",
        "image_size": "32",
        "base_channels": "4",
        "depth": "2",
        "max_epochs": "2",
        "batch_size": "8",
        "num_workers": "0",
        "min_dice": "0",
        "raw_dir": str(folder / "raw"),
        "processed_dir": str(folder / "processed"),
        "checkpoint_dir": str(folder / "checkpoints"),
    }
    result = run_entry_point("main", params, client_environment(folder, server))
    assert result.returncode == 0, result.stderr[-4000:] + server.log.read_text()[-2000:]
    client = MlflowClient(tracking_uri=server.url)
    experiment = client.get_experiment_by_name("unet-person")
    runs = client.search_runs([experiment.experiment_id])
    return {run.data.tags["mlflow.project.entryPoint"]: run.info.run_id for run in runs}


def bucket_keys(s3: tuple[str, str]) -> list[str]:
    endpoint, bucket = s3
    pages = boto3.client("s3", endpoint_url=endpoint, **lower(S3_CREDENTIALS)).get_paginator(
        "list_objects_v2"
    )
    return [
        item["Key"] for page in pages.paginate(Bucket=bucket) for item in page.get("Contents", [])
    ]


def test_artifacts_and_the_model_are_objects_in_the_bucket(pipeline_run, s3) -> None:
    keys = bucket_keys(s3)
    for entry_point in ("download", "preprocess", "evaluate"):
        assert any(pipeline_run[entry_point] in key for key in keys), entry_point
    evaluate = [key for key in keys if pipeline_run["evaluate"] in key]
    assert any(key.endswith("/per_image.csv") for key in evaluate)
    assert any(key.endswith("/best_and_worst.png") for key in evaluate)
    assert any(key.endswith("/dataset/df.csv") for key in keys)
    assert any(key.endswith("/processed/train_images.npy") for key in keys)
    model_files = [key for key in keys if "/models/" in key or "/model/" in key]
    assert any(key.endswith("MLmodel") for key in model_files)
    assert any(key.endswith("/artifacts/unet.pt") for key in model_files)
    assert any(key.endswith("/code/pipeline/serving/segmenter.py") for key in model_files)


def test_runs_and_metrics_are_rows_in_postgres(pipeline_run, database: Database) -> None:
    rows = database.query(
        "SELECT r.run_uuid, r.status, m.key, count(*) FROM runs r "
        "JOIN metrics m ON m.run_uuid = r.run_uuid GROUP BY r.run_uuid, r.status, m.key"
    )
    counts = {(run, key): count for run, _, key, count in rows}
    assert {status for _, status, _, _ in rows} == {"FINISHED"}
    assert counts[(pipeline_run["train"], "val_dice")] == 2
    assert counts[(pipeline_run["train"], "train_loss_step")] >= 2
    assert counts[(pipeline_run["evaluate"], "test_dice")] == 1
    (parent,) = database.query(
        "SELECT value FROM tags WHERE run_uuid = %s AND key = 'mlflow.parentRunId'",
        pipeline_run["train"],
    )
    assert parent[0] == pipeline_run["main"]
    (test_dice,) = database.query(
        "SELECT value FROM latest_metrics WHERE run_uuid = %s AND key = 'test_dice'",
        pipeline_run["main"],
    )
    assert 0.0 <= test_dice[0] <= 1.0


def test_promotion_through_the_server(
    pipeline_run, server: Server, database: Database, tmp_path: Path
) -> None:
    """main promoted its model; promoting it again makes no second version and keeps the record
    of the move; a worse model is registered, refused and recorded, and the alias stays, as the
    registry tables show."""
    client = MlflowClient(tracking_uri=server.url)
    champion = client.get_model_version_by_alias("unet-person", "champion")
    assert str(champion.version) == "1"
    assert champion.tags["unet_person.decision"] == "promoted"
    assert champion.tags["unet_person.promote_run_id"] == pipeline_run["promote"]
    assert champion.tags["unet_person.candidate_dice_from"] == pipeline_run["evaluate"]

    env = client_environment(tmp_path, server)
    split = f"runs:/{pipeline_run['preprocess']}/processed"  # fetched through the server
    again = run_entry_point(
        "promote", {"model_uri": champion.source, "data_dir": split, "min_dice": "0"}, env
    )
    assert again.returncode == 0, again.stderr[-3000:]
    kept = client.get_model_version("unet-person", "1").tags
    assert kept["unet_person.decision"] == "promoted"  # a no-op never erases the move
    assert kept["unet_person.promote_run_id"] == pipeline_run["promote"]

    mlflow.set_tracking_uri(server.url)
    worse = log_model(constant_net(-20.0))  # calls nobody a person: Dice 0
    refused = run_entry_point("promote", {"model_uri": worse, "data_dir": split}, env)
    assert refused.returncode == 0, refused.stderr[-3000:]
    (aliases,) = database.query(
        "SELECT alias, version FROM registered_model_aliases WHERE name = 'unet-person'"
    )
    assert aliases == ("champion", 1)
    versions = database.query(
        "SELECT v.version, t.value FROM model_versions v JOIN model_version_tags t "
        "ON t.name = v.name AND t.version = v.version "
        "WHERE v.name = 'unet-person' AND t.key = 'unet_person.decision' ORDER BY v.version"
    )
    assert versions == [(1, "promoted"), (2, "rejected")]
    lost = client.get_model_version("unet-person", "2").tags
    assert float(lost["unet_person.candidate_dice"]) == 0.0
    assert lost["unet_person.champion_version"] == "1"
    assert lost["unet_person.candidate_dice_from"] == "this run"


def test_parallel_writers_do_not_deadlock(server: Server) -> None:
    client = MlflowClient(tracking_uri=server.url)
    experiment_id = client.create_experiment(f"writers-{uuid.uuid4().hex[:6]}")
    run_id = client.create_run(experiment_id).info.run_id
    failures: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            for batch in range(10):
                metrics = [
                    Metric(f"writer_{index}", float(step), 0, batch * 20 + step)
                    for step in range(20)
                ]
                client.log_batch(run_id, metrics=metrics)
        except BaseException as error:  # collected and asserted below
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures
    assert not any(thread.is_alive() for thread in threads)
    for index in range(6):
        assert len(client.get_metric_history(run_id, f"writer_{index}")) == 200


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, role: Role, s3) -> Iterator[Server]:
    generators = [fresh_database(role), fresh_database(role)]
    tracking, users = (next(generator) for generator in generators)
    started = start_server(
        tmp_path_factory.mktemp("auth-server"),
        tracking,
        s3,
        MLFLOW_AUTH="true",
        MLFLOW_AUTH_DATABASE_URI=users.uri,
        MLFLOW_AUTH_ADMIN_PASSWORD="admin-password-for-tests",
        MLFLOW_FLASK_SERVER_SECRET_KEY="secret-key-for-tests",
    )
    yield started
    stop_server(started)
    for generator in generators:
        generator.close()


def test_basic_auth_refuses_strangers_and_admits_users(auth_server: Server, tmp_path) -> None:
    search = f"{auth_server.url}/api/2.0/mlflow/experiments/search"
    assert requests.get(search, params={"max_results": 1}, timeout=10).status_code == 401
    params = {"source": "synthetic:3", "output_dir": str(tmp_path / "raw"), "log_data": "false"}

    refused = run_entry_point("download", params, client_environment(tmp_path, auth_server))
    assert refused.returncode == 2
    assert "refused access (HTTP 401)" in refused.stderr
    assert "MLFLOW_TRACKING_USERNAME" in refused.stderr
    assert not (tmp_path / "raw").exists()

    user = {
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": "admin-password-for-tests",
    }
    admitted = run_entry_point(
        "download", params, client_environment(tmp_path, auth_server, **user)
    )
    assert admitted.returncode == 0, admitted.stderr[-3000:]
    response = requests.get(
        search,
        params={"max_results": 10},
        auth=("admin", user["MLFLOW_TRACKING_PASSWORD"]),
        timeout=10,
    )
    assert "unet-person" in {experiment["name"] for experiment in response.json()["experiments"]}


# --- What `ps` shows ------------------------------------------------------------------------


def process_group(pgid: int) -> dict[int, str]:
    """The command line of every process in process group `pgid`, as `ps` shows it."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def server_secrets(server: Server) -> set[str]:
    names = ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "MLFLOW_AUTH_ADMIN_PASSWORD")
    return {
        server.env[name]
        for name in (*names, "MLFLOW_FLASK_SERVER_SECRET_KEY")
        if name in server.env
    }


@pytest.mark.parametrize("name", ["server", "auth_server"])
def test_no_server_process_shows_a_secret(name: str, request) -> None:
    server: Server = request.getfixturevalue(name)
    secrets = server_secrets(server)
    assert server.env["PGPASSWORD"] in secrets and len(secrets) == (
        4 if name == "auth_server" else 2
    )
    processes = process_group(server.process.pid)
    assert len(processes) >= 3, processes  # mlflow server, uvicorn, its workers
    assert any("uvicorn" in cmdline for cmdline in processes.values()), processes
    for pid, cmdline in processes.items():
        assert not [secret for secret in secrets if secret in cmdline], f"pid {pid}: {cmdline}"
    # Nor does any file it wrote under its TMPDIR (the auth config is its user's alone).
    folder = Path(server.env["TMPDIR"])
    for path in folder.rglob("*"):
        if path.is_file():
            assert not [s for s in secrets if s.encode() in path.read_bytes()], path
            if path.name.startswith("mlflow-basic-auth"):
                assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_server_refuses_to_listen_beyond_loopback_without_auth(
    tmp_path: Path, database: Database, s3
) -> None:
    port = free_port()
    env = server_environment(tmp_path, database, s3, port, MLFLOW_HOST="0.0.0.0")
    refused = subprocess.run(
        ["sh", str(SERVER_SCRIPT), "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "0.0.0.0" in refused.stderr and "MLFLOW_AUTH=true" in refused.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=5)


@pytest.mark.fault
def test_tracking_server_under_load_loses_no_row(server: Server, database: Database) -> None:
    """benchmarks/tracking_load.py, smaller: 8 training clients and a UI-like reader at once,
    without retries. No client sees an error, and every row is in PostgreSQL."""
    load = Load(clients=8, steps=25, metrics=3)
    figures = run_load(server.url, {"dbname": database.name, **postgres_settings()}, load)
    assert figures["errors"] == 0, figures["error_samples"]
    assert figures["metric_rows"] == {"sent": 8 * 25 * 3, "stored": 8 * 25 * 3, "lost": 0}
    rows = figures["rows"]
    assert rows["finished_runs"] == 8
    assert (rows["latest_metrics"], rows["params"]) == (8 * 3, 8 * PARAMS)
    assert figures["reads"]["requests"] >= 1 + 8, "the reader saw every run at least once"
