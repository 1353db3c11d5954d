"""An S3 API for tests: moto in server mode (real HTTP, real boto3) on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
from moto.server import ThreadedMotoServer

from tests.conftest import free_port

S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test-access-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def lower(credentials: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"],
        "region_name": credentials["AWS_DEFAULT_REGION"],
    }


def moto_server(port: int) -> ThreadedMotoServer:
    """A moto S3 server on `port`; moto keeps its buckets in this process, so one started
    again on the same port after a stop serves what the last one held."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    return server


def moto_bucket(bucket: str) -> Iterator[tuple[str, str]]:
    """(endpoint, bucket) of a moto S3 server holding the empty `bucket`, stopped afterwards."""
    port = free_port()
    server = moto_server(port)
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, **lower(S3_CREDENTIALS)).create_bucket(Bucket=bucket)
    yield endpoint, bucket
    server.stop()
