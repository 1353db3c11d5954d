"""Fixtures of the stack tests: a role and database, an S3 API and a tracking server per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3 import moto_bucket
from tests.stack.stack import (
    Database,
    Role,
    Server,
    fresh_database,
    fresh_role,
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
    yield from moto_bucket("mlflow-artifacts")


@pytest.fixture(scope="module")
def server(tmp_path_factory, database: Database, s3) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("server"), database, s3)
    yield started
    stop_server(started)
