"""Where batch prediction reads photos and writes masks: a folder, or an `s3://bucket/prefix`
of any S3 API (MinIO in the stack), reached with boto3 so that no Hadoop S3A jars are needed.

A location is listed once, on the driver (sorted, hidden files and earlier output left out,
a symlink out of a folder listed with its reason and never opened), and read and written by
name wherever the work runs: the objects are small and picklable, so Spark ships them to its
executors. S3's endpoint and credentials come from the environment as the rest of the stack
has them (MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pipeline.errors import PipelineError, first_line

S3_SCHEME = "s3://"
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE")
ENDPOINT_VARIABLES = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# Bounded waits: an endpoint that does not answer is an error within seconds, not a hang.
S3_TIMEOUT_S = 10
S3_ATTEMPTS = 4
MISSING_BUCKET = "the bucket does not exist: create it or fix the URI"
REFUSED = "the credentials were refused: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
DENIED = "access denied: these credentials may not list, read or write there"
S3_REFUSALS = {
    "NoSuchBucket": MISSING_BUCKET,
    "404": MISSING_BUCKET,
    "InvalidAccessKeyId": REFUSED,
    "SignatureDoesNotMatch": REFUSED,
    "AccessDenied": DENIED,
    "403": DENIED,
}


@dataclass(frozen=True)
class Listed:
    """A file found under a location: its name there, its size, and why it is refused (or "")."""

    name: str
    size: int
    refused: str = ""


def hidden(name: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(name).parts)


@dataclass(frozen=True)
class Folder:
    root: Path

    @property
    def uri(self) -> str:
        return str(self.root)

    def inside(self, other: Folder | Bucket) -> bool:
        return isinstance(other, Folder) and self.root.resolve().is_relative_to(
            other.root.resolve()
        )

    def listing(self, role: str, leave_out: Folder | Bucket | None = None) -> list[Listed]:
        if not self.root.is_dir():
            raise PipelineError(f"{role}={self.root} is not a folder: pass the folder of photos")
        real_root = self.root.resolve()
        inner = isinstance(leave_out, Folder) and leave_out.inside(self)
        skipped = leave_out.root.resolve() if inner else None
        found = []
        for path in sorted(self.root.rglob("*")):
            name = path.relative_to(self.root).as_posix()
            if hidden(name) or not (path.is_file() or path.is_symlink()):
                continue
            try:
                real = path.resolve(strict=True)
            except (OSError, RuntimeError) as error:  # a dangling link, a loop
                found.append(Listed(name, 0, f"cannot be followed ({type(error).__name__})"))
                continue
            if skipped is not None and real.is_relative_to(skipped):
                continue
            if not real.is_relative_to(real_root):
                found.append(Listed(name, 0, "a symlink to a file outside the folder: not read"))
            elif real.is_file():
                found.append(Listed(name, real.stat().st_size))
        return found

    def read(self, name: str) -> bytes:
        path = self.root / name
        # Checked again where it is read: the link may have changed since the listing.
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise OSError(f"{name} now leads outside {self.root}: not read")
        return path.read_bytes()

    def write(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(data)
        partial.replace(path)  # a killed job leaves no half-written mask under its name

    def check_writable(self, role: str) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PipelineError(f"{role}={self.root} cannot be made ({error})") from error


@dataclass(frozen=True)
class Bucket:
    bucket: str
    prefix: str  # "" or ending in "/"
    # The driver's, so executors reach the same S3 API; credentials are the executors' own
    # (their environment, ~/.aws, an instance role), never shipped with the work.
    endpoint: str | None = field(default_factory=lambda: s3_endpoint())

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}"

    def inside(self, other: Folder | Bucket) -> bool:
        return (
            isinstance(other, Bucket)
            and self.bucket == other.bucket
            and self.prefix.startswith(other.prefix)
        )

    def listing(self, role: str, leave_out: Folder | Bucket | None = None) -> list[Listed]:
        inner = isinstance(leave_out, Bucket) and leave_out.inside(self)
        skipped = leave_out.prefix if inner else None
        found = []
        pages = s3_client(self.endpoint).get_paginator("list_objects_v2")
        with s3_errors(role, self.uri):
            for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", []):
                    key = item["Key"]
                    name = key[len(self.prefix) :]
                    if not name or key.endswith("/") or hidden(name):
                        continue
                    if skipped is not None and key.startswith(skipped):
                        continue
                    found.append(Listed(name, int(item["Size"])))
        return sorted(found, key=lambda listed: listed.name)

    def read(self, name: str) -> bytes:
        """The object's bytes; its failure (gone, denied, the API away past the retries) is
        this file's OSError, a row of the table, not the job's."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = s3_client(self.endpoint).get_object(Bucket=self.bucket, Key=self.prefix + name)
            return answer["Body"].read()
        except (BotoCoreError, ClientError) as error:
            raise OSError(f"cannot read {self.uri}{name} ({first_line(error)})") from error

    def write(self, name: str, data: bytes) -> None:
        s3_client(self.endpoint).put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)

    def check_writable(self, role: str) -> None:
        with s3_errors(role, self.uri):
            s3_client(self.endpoint).head_bucket(Bucket=self.bucket)


Location = Folder | Bucket


def location(text: str) -> Location:
    """`s3://bucket/prefix` as a Bucket, anything else as a Folder (`~` expanded)."""
    if not text.startswith(S3_SCHEME):
        # Absolute: Spark's Python workers do not run in this process's working folder.
        return Folder(Path(text).expanduser().absolute())
    bucket, _, prefix = text[len(S3_SCHEME) :].partition("/")
    prefix = prefix.strip("/")
    return Bucket(bucket, f"{prefix}/" if prefix else "")


def check_location(role: str, text: str) -> None:
    """A parameter's location, checked while parsing: an S3 URI names a bucket."""
    if text.startswith(S3_SCHEME) and not location(text).bucket:
        raise PipelineError(
            f"parameter {role}={text!r} names no bucket: give s3://<bucket>/<prefix>"
        )


def s3_endpoint() -> str | None:
    return next((os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)), None)


def s3_config() -> Any:
    """botocore's settings for every S3 client here: bounded waits and attempts."""
    from botocore.config import Config

    return Config(
        connect_timeout=S3_TIMEOUT_S,
        read_timeout=S3_TIMEOUT_S * 6,
        retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"},
    )


@functools.cache
def _client(endpoint: str | None, pid: int, credentials: tuple[str | None, ...]) -> Any:
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=s3_config())


def s3_client(endpoint: str | None) -> Any:
    """One boto3 client per process, endpoint and credentials in the environment (clients are
    not shared across forks, and a changed key gets a new client)."""
    credentials = tuple(os.environ.get(name) for name in CREDENTIAL_VARIABLES)
    return _client(endpoint, os.getpid(), credentials)


@contextmanager
def s3_errors(role: str, uri: str) -> Iterator[None]:
    """botocore's errors on `uri` as one line that says what to do."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError as error:
        raise PipelineError(
            f"{role}={uri}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from error
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        advice = S3_REFUSALS.get(code, f"the S3 API refused ({first_line(error)})")
        raise PipelineError(f"{role}={uri}: {advice}") from error
    except BotoCoreError as error:
        endpoint = s3_endpoint() or "AWS's own endpoint"
        raise PipelineError(
            f"{role}={uri}: cannot reach {endpoint} ({first_line(error)}): set "
            "MLFLOW_S3_ENDPOINT_URL (or AWS_ENDPOINT_URL) to the S3 API's address"
        ) from error
