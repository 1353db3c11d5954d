"""The stack's runtime parts as real processes, for the tests that need them: a fresh database
of the suite's PostgreSQL (PGHOST's, or the session's embedded cluster: tests/conftest.py), a
moto S3 server, and the MLflow server started by the same script compose runs
(docker/mlflow-server.sh).

The server's databases belong to a role with a password, given as PGPASSWORD the way compose
gives it: the suite's PostgreSQL trusts its connections and ignores it, but the server holds
a real secret, which no command line of its processes may show.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from benchmarks.tracking_load import SERVER_SCRIPT, admin_sql, postgres_settings, serve_script
from pipeline.orchestration.project import project_dir, step_command
from tests.conftest import free_port, isolated_environment
from tests.s3 import S3_CREDENTIALS


@dataclass
class Role:
    name: str
    password: str


@dataclass
class Database:
    name: str
    owner: Role | None = None

    @property
    def uri(self) -> str:
        """The server's URI: as the owner, with no password in it (libpq reads PGPASSWORD)."""
        server = postgres_settings()  # read at each use: the session may set PG* after import
        user = self.owner.name if self.owner else server["user"]
        return f"postgresql+psycopg2://{user}@{server['host']}:{server['port']}/{self.name}"

    def query(self, sql: str, *args) -> list[tuple]:
        connection = psycopg2.connect(dbname=self.name, **postgres_settings())
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, args)
                return cursor.fetchall()
        finally:
            connection.close()


def fresh_role() -> Iterator[Role]:
    role = Role(f"unet_person_{uuid.uuid4().hex[:10]}", f"Leak{uuid.uuid4().hex}")
    admin_sql(f"CREATE ROLE \"{role.name}\" LOGIN PASSWORD '{role.password}'")
    try:
        yield role
    finally:
        admin_sql(f'DROP ROLE IF EXISTS "{role.name}"')


def fresh_database(owner: Role | None = None) -> Iterator[Database]:
    name = f"unet_person_{uuid.uuid4().hex[:10]}"
    admin_sql(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner.name}"' if owner else ""))
    try:
        yield Database(name, owner)
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    env: dict[str, str]


def server_environment(
    folder: Path, database: Database, s3: tuple[str, str], port: int, **extra: str
) -> dict[str, str]:
    endpoint, bucket = s3
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
    if database.owner:
        env["PGPASSWORD"] = database.owner.password
    return env


def start_server(folder: Path, database: Database, s3: tuple[str, str], **extra: str) -> Server:
    port = free_port()
    env = server_environment(folder, database, s3, port, **extra)
    upgrade = subprocess.run(
        ["sh", str(SERVER_SCRIPT), "upgrade"], env=env, capture_output=True, text=True
    )
    assert upgrade.returncode == 0, upgrade.stderr[-3000:]
    return serve(env, folder / f"server-{port}.log")


def serve(env: dict[str, str], log: Path) -> Server:
    """`mlflow-server.sh serve` with `env`, once it answers /health."""
    process, url = serve_script(env, log)
    return Server(url, process, log, env)


def stop_server(server: Server) -> None:
    os.killpg(server.process.pid, 15)
    server.process.wait(timeout=30)


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
