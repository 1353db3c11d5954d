"""Fixtures of the stack tests: a role and database, an S3 API and a tracking server per module."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import free_port
from tests.stack.stack import (
    S3_CREDENTIALS,
    Database,
    Role,
    Server,
    fresh_database,
    fresh_role,
    lower,
    start_server,
    stop_server,
)


@pytest.fixture(scope="module")
def role() -> Iterator[Role]:
    yield from fresh_role()


@pytest.fixture(scope="module")
def database(role: Role) -> Iterator[Database]:
    yield from fresh_database(role)


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


@pytest.fixture(scope="module")
def server(tmp_path_factory, database: Database, s3) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("server"), database, s3)
    yield started
    stop_server(started)
