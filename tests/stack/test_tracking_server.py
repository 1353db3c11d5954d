"""The stack's runtime parts as real processes: the MLflow server started by the same script
compose runs (docker/mlflow-server.sh), metadata in a fresh database of this machine's
PostgreSQL, artifacts in an S3 bucket served by moto. `main` runs against it; then the bucket
(through boto3) and the database (through SQL) must hold what the runs logged.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import mlflow
import psycopg2
import pytest
import requests
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from moto.server import ThreadedMotoServer

from pipeline.orchestration.project import project_dir, step_command
from tests.conftest import free_port, isolated_environment
from tests.segmenters import constant_net, log_model

pytestmark = pytest.mark.e2e

# The machine's PostgreSQL (trust auth); libpq's variables point elsewhere.
POSTGRES = {
    "host": os.environ.get("PGHOST", "127.0.0.1"),
    "port": int(os.environ.get("PGPORT", "5432")),
    "user": os.environ.get("PGUSER", "postgres"),
}
SERVER_SCRIPT = project_dir() / "docker" / "mlflow-server.sh"
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test-access-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Database:
    name: str

    @property
    def uri(self) -> str:
        return (
            f"postgresql+psycopg2://{POSTGRES['user']}@{POSTGRES['host']}:{POSTGRES['port']}"
            f"/{self.name}"
        )

    def query(self, sql: str, *args) -> list[tuple]:
        connection = psycopg2.connect(dbname=self.name, **POSTGRES)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, args)
                return cursor.fetchall()
        finally:
            connection.close()


def fresh_database() -> Iterator[Database]:
    name = f"unet_person_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(dbname="postgres", **POSTGRES)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Database(name)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    yield from fresh_database()


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[str, str]]:
    """(endpoint, bucket) of a moto S3 server on a loopback port."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    bucket = "mlflow-artifacts"
    boto3.client("s3", endpoint_url=endpoint, **lower(S3_CREDENTIALS)).create_bucket(Bucket=bucket)
    yield endpoint, bucket
    server.stop()


def lower(credentials: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
        "region_name": credentials["AWS_DEFAULT_REGION"],
    }


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path


def start_server(folder: Path, database: Database, s3: tuple[str, str], **extra: str) -> Server:
    endpoint, bucket = s3
    port = free_port()
    env = {
        **os.environ,
        **S3_CREDENTIALS,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_BACKEND_STORE_URI": database.uri,
        "MLFLOW_ARTIFACTS_DESTINATION": f"s3://{bucket}",
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "2",
        "TMPDIR": str(folder),
        **extra,
    }
    upgrade = subprocess.run(
        ["sh", str(SERVER_SCRIPT), "upgrade"], env=env, capture_output=True, text=True
    )
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]
    log = folder / f"server-{port}.log"
    process = subprocess.Popen(
        ["sh", str(SERVER_SCRIPT), "serve"],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return Server(url, process, log)
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"server did not become healthy:\n{log.read_text()[-3000:]}")


def stop_server(server: Server) -> None:
    os.killpg(server.process.pid, 15)
    server.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory, database: Database, s3) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("server"), database, s3)
    yield started
    stop_server(started)


def client_environment(folder: Path, server: Server, **extra: str) -> dict[str, str]:
    """A client that knows only the server: no S3 endpoint, no S3 credentials."""
    env = isolated_environment(folder)
    for name in (*S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL"):
        env.pop(name, None)
    return {**env, "MLFLOW_TRACKING_URI": server.url, **extra}


def run_entry_point(entry_point: str, params: dict[str, str], env: dict[str, str]):
    command = shlex.split(step_command(entry_point, params))
    return subprocess.run(
        [sys.executable, *command[1:]],
        cwd=project_dir(),
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


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
    """main promoted its model; promoting it again makes no second version; a worse model is
    registered, refused and recorded, and the alias stays, as the registry tables show."""
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
    assert client.get_model_version("unet-person", "1").tags["unet_person.decision"] == (
        "unchanged"
    )

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
    assert versions == [(1, "unchanged"), (2, "rejected")]
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
def auth_server(tmp_path_factory, s3) -> Iterator[Server]:
    generators = [fresh_database(), fresh_database()]
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
