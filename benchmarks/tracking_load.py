"""Tracking server under load: concurrent training clients and a UI-like reader.

The real stack's server (docker/mlflow-server.sh, as compose runs it) on a fresh database of the
PostgreSQL that PGHOST (PGPORT, PGUSER) names, or with PGHOST unset of a cluster of its own
(benchmarks/embedded_postgres.py, durable like a real one), artifacts in a moto S3 bucket.
Each client process logs like a training run: a run with tags and params, then one log_batch of
a few metrics per step for several hundred steps, then the run's end. One reader process polls
like the MLflow UI: search_runs, then each run's metric history, until every run has finished.
Afterwards PostgreSQL is asked how many metric rows arrived.

Clients make no retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0): a request the server fails counts
as an error instead of disappearing into MLflow's retry loop.

    python -m benchmarks tracking_load              # 8 clients x 500 steps x 4 metrics
    python -m benchmarks tracking_load --steps 50   # a quick look
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from unittest.mock import patch

import mlflow
import psycopg2
import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from benchmarks.embedded_postgres import embedded_postgres
from benchmarks.measure import end_with_this_process, free_port
from pipeline.tracking.tags import RECIPE_TAG

TITLE = "Tracking server under load"
SERVER_START_TIMEOUT_S = 180
SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "docker" / "mlflow-server.sh"
METRIC_KEYS = ("train_loss", "train_dice", "lr", "grad_norm", "step_time_s", "gpu_memory_gb")
PARAMS = 12
# The reader never polls longer than this, whatever the writers do.
READER_DEADLINE_S = 900.0
READER_PAUSE_S = 0.25
S3_KEYS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}


@dataclass
class Load:
    clients: int = 8
    steps: int = 500
    metrics: int = 4
    workers: int = 2


@dataclass
class Timings:
    """Per-request latencies (seconds) by kind, every error a client saw, and the wall-clock
    window from the first request's start to the last one's end."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    first: float = math.inf
    last: float = 0.0

    def measure(self, kind: str, call, *args, **kwargs):
        self.first = min(self.first, time.time())
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        except Exception as error:  # every failure is a figure here, not a crash
            self.errors.append(f"{kind}: {type(error).__name__}: {str(error)[:300]}")
            return None
        finally:
            self.latencies.setdefault(kind, []).append(time.perf_counter() - started)
            self.last = time.time()

    def merge(self, other: Timings) -> None:
        for kind, values in other.latencies.items():
            self.latencies.setdefault(kind, []).extend(values)
        self.errors.extend(other.errors)
        self.first, self.last = min(self.first, other.first), max(self.last, other.last)

    @property
    def seconds(self) -> float:
        return self.last - self.first


def _client_setup() -> None:
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "120"


def _wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.time()))


def train_like(url: str, experiment_id: str, index: int, load: Load, start_at: float) -> Timings:
    """One training client: a run with tags and params, one log_batch per step, the end."""
    client, timings = MlflowClient(tracking_uri=url), Timings()
    _wait_until(start_at)
    tags = {"mlflow.runName": f"client-{index}", RECIPE_TAG: "default"}
    run = timings.measure("create_run", client.create_run, experiment_id, tags=tags)
    if run is None:
        return timings
    run_id = run.info.run_id
    params = [Param(f"param_{i}", str(i * index)) for i in range(PARAMS)]
    timings.measure(
        "log_batch",
        client.log_batch,
        run_id,
        params=params,
        tags=[RunTag("unet_person.client", str(index))],
    )
    keys = METRIC_KEYS[: load.metrics]
    for step in range(load.steps):
        now = int(time.time() * 1000)
        metrics = [Metric(key, math.sin(step + i) + index, now, step) for i, key in enumerate(keys)]
        timings.measure("log_batch", client.log_batch, run_id, metrics=metrics)
    timings.measure("update_run", client.set_terminated, run_id)
    return timings


def read_like_the_ui(url: str, experiment_id: str, load: Load, start_at: float) -> Timings:
    """Poll the experiment's runs and their charts until every run has ended (or a deadline)."""
    client, timings = MlflowClient(tracking_uri=url), Timings()
    _wait_until(start_at)
    deadline = time.monotonic() + READER_DEADLINE_S
    while time.monotonic() < deadline:
        runs = timings.measure(
            "search_runs",
            client.search_runs,
            [experiment_id],
            max_results=100,
            order_by=["attributes.start_time DESC"],
        )
        for run in runs or []:
            timings.measure(
                "get_metric_history", client.get_metric_history, run.info.run_id, "train_loss"
            )
        if (
            runs is not None
            and len(runs) == load.clients
            and all(run.info.status != "RUNNING" for run in runs)
        ):
            break
        time.sleep(READER_PAUSE_S)
    return timings


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def summary(values: list[float], seconds: float) -> dict[str, float]:
    if not values:
        return {"requests": 0, "per_s": 0.0, "p50_ms": 0.0, "p95_ms": 0.0, "max_ms": 0.0}
    return {
        "requests": len(values),
        "per_s": round(len(values) / seconds, 1),
        "p50_ms": round(percentile(values, 0.50) * 1000, 1),
        "p95_ms": round(percentile(values, 0.95) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def stored_rows(database: dict, experiment_id: str) -> dict[str, int]:
    """Rows of the experiment's runs in PostgreSQL, by table."""
    connection = psycopg2.connect(**database)
    try:
        with connection.cursor() as cursor:
            counts = {}
            for table in ("metrics", "latest_metrics", "params", "tags"):
                cursor.execute(
                    f"SELECT count(*) FROM {table} t JOIN runs r ON r.run_uuid = t.run_uuid "
                    "WHERE r.experiment_id = %s",
                    (int(experiment_id),),
                )
                counts[table] = cursor.fetchone()[0]
            cursor.execute(
                "SELECT count(*) FROM runs WHERE experiment_id = %s AND status = 'FINISHED'",
                (int(experiment_id),),
            )
            counts["finished_runs"] = cursor.fetchone()[0]
            return counts
    finally:
        connection.close()


def run_load(url: str, database: dict, load: Load) -> dict:
    """Drive the server at `url` with `load`; the figures, rows counted in `database`."""
    experiment_id = MlflowClient(tracking_uri=url).create_experiment(f"load-{uuid.uuid4().hex[:8]}")
    start_at = time.time() + 5 + load.clients  # every process imported MLflow by then
    with ProcessPoolExecutor(
        load.clients + 1, mp_context=get_context("spawn"), initializer=_client_setup
    ) as pool:
        writers = [
            pool.submit(train_like, url, experiment_id, index, load, start_at)
            for index in range(load.clients)
        ]
        reader = pool.submit(read_like_the_ui, url, experiment_id, load, start_at)
        written = Timings()
        for writer in writers:
            written.merge(writer.result())
        read = reader.result()
    every = Timings()
    every.merge(written)
    every.merge(read)
    requests_made = sum(len(values) for values in every.latencies.values())
    rows = stored_rows(database, experiment_id)
    sent = load.clients * load.steps * load.metrics
    reads = read.latencies.get("search_runs", []) + read.latencies.get("get_metric_history", [])
    return {
        "load": asdict(load),
        "seconds": round(every.seconds, 1),
        "writers_seconds": round(written.seconds, 1),
        "requests": requests_made,
        "requests_per_s": round(requests_made / every.seconds, 1),
        "log_batch": summary(written.latencies.get("log_batch", []), written.seconds),
        "reads": summary(reads, read.seconds),
        "metric_rows": {"sent": sent, "stored": rows["metrics"], "lost": sent - rows["metrics"]},
        "rows": rows,
        "errors": len(every.errors),
        "error_samples": every.errors[:10],
    }


# --- The stack: PostgreSQL database, S3 bucket, the server script -----------------------------


def postgres_settings() -> dict:
    """The PostgreSQL that libpq's variables name, as psycopg2 takes it (defaults: 127.0.0.1:5432 as
    `postgres`, trust auth). With PGHOST unset, the test suite and `run` set them to an embedded
    cluster first."""
    return {
        "host": os.environ.get("PGHOST", "127.0.0.1"),
        "port": int(os.environ.get("PGPORT", "5432")),
        "user": os.environ.get("PGUSER", "postgres"),
    }


def admin_sql(sql: str) -> None:
    """One statement as the machine's PostgreSQL superuser, outside any transaction."""
    connection = psycopg2.connect(dbname="postgres", **postgres_settings())
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
    finally:
        connection.close()


def serve_script(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """`docker/mlflow-server.sh serve` with `env`, in its own process group (ended with this
    process), once it answers /health: the process and its URL. The stack tests start their
    servers this way too."""
    server = subprocess.Popen(
        ["sh", str(SERVER_SCRIPT), "serve"],
        env=env,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    end_with_this_process(server.pid)
    url = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while True:
        if server.poll() is not None or time.monotonic() > deadline:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            raise RuntimeError(f"the server did not start:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return server, url
        except requests.ConnectionError:
            pass
        time.sleep(0.5)


@contextmanager
def stack(workers: int) -> Iterator[tuple[str, dict]]:
    """A server on a fresh database and bucket: (its URL, the database's connection kwargs)."""
    # Test extras, and needed by this process only, not by the clients it spawns.
    import boto3
    from moto.server import ThreadedMotoServer

    name = f"unet_person_load_{uuid.uuid4().hex[:8]}"
    admin_sql(f'CREATE DATABASE "{name}"')
    s3_port, port = free_port(), free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port)
    moto.start()
    endpoint = f"http://127.0.0.1:{s3_port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket="mlflow")
    postgres = postgres_settings()
    folder = tempfile.mkdtemp(prefix="tracking-load-")
    env = {
        **os.environ,
        **S3_KEYS,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_BACKEND_STORE_URI": (
            f"postgresql+psycopg2://{postgres['user']}@{postgres['host']}:{postgres['port']}/{name}"
        ),
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://mlflow",
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": str(workers),
        "TMPDIR": folder,
    }
    upgrade = subprocess.run(
        ["sh", str(SERVER_SCRIPT), "upgrade"], env=env, capture_output=True, text=True
    )
    if upgrade.returncode:
        raise RuntimeError(f"the schema upgrade failed:\n{upgrade.stderr[-3000:]}")
    server, url = serve_script(env, Path(folder) / "server.log")
    try:
        yield url, {"dbname": name, **postgres}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        moto.stop()
        admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(folder, ignore_errors=True)


# --- The benchmark package's interface (benchmarks/__init__.py) -------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Load()
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument(
        "--metrics", type=int, default=defaults.metrics, choices=range(1, len(METRIC_KEYS) + 1)
    )
    parser.add_argument("--workers", type=int, default=defaults.workers)


def run(options: argparse.Namespace) -> dict:
    load = Load(options.clients, options.steps, options.metrics, options.workers)
    with ExitStack() as server:
        if not os.environ.get("PGHOST"):  # no server named: an embedded one, durable (see there)
            variables = server.enter_context(embedded_postgres(durable=True))
            server.enter_context(patch.dict(os.environ, variables))
        before = os.getloadavg()[0]
        with stack(load.workers) as (url, database):
            figures = run_load(url, database, load)
            connection = psycopg2.connect(**database)
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SHOW server_version")
                    postgres = cursor.fetchone()[0].split()[0]
            finally:
                connection.close()
    figures.update(
        load_average={"before": round(before, 1), "after": round(os.getloadavg()[0], 1)},
        mlflow=mlflow.__version__,
        postgres=postgres,
    )
    print(table(figures))
    if figures["errors"]:
        print("errors:", *figures["error_samples"], sep="\n  ")
    return figures


def spread(summary: dict) -> str:
    return f"{summary['p50_ms']} / {summary['p95_ms']} / {summary['max_ms']} ms"


def table(figures: dict) -> str:
    write, read, rows = figures["log_batch"], figures["reads"], figures["metric_rows"]
    return f"""| figure | value |
|---|---:|
| requests, all clients | {figures["requests"]} in {figures["seconds"]} s |
| requests/s, all clients | {figures["requests_per_s"]} |
| `log_batch` requests/s (writers, {figures["writers_seconds"]} s) | {write["per_s"]} |
| `log_batch` latency p50 / p95 / max | {spread(write)} |
| reader requests (`search_runs`, `get_metric_history`) | {read["requests"]} |
| reader latency p50 / p95 / max | {spread(read)} |
| metric rows sent / stored / lost | {rows["sent"]} / {rows["stored"]} / {rows["lost"]} |
| errors seen by any client | {figures["errors"]} |
"""


def section(results: dict[str, dict]) -> str:
    """BENCHMARKS.md's part: what is measured, then each machine's figures."""
    parts = [
        f"""## {TITLE}

Training clients, each its own process, log one run apiece against the real tracking server
(`docker/mlflow-server.sh`, as compose starts it, on a fresh PostgreSQL database; artifacts in a
moto S3 bucket): tags and {PARAMS} params, then one `log_batch` of a few metrics per step, then
the run's end. At the same time one reader polls like the UI: `search_runs`, then
`get_metric_history` of every run, until all runs have ended. Clients make no retries, so a
failed request counts as an error. Afterwards PostgreSQL's `metrics` table is counted. Latency
is per request, as the client sees it; the machine also runs PostgreSQL and every client, so the
server gets only a share of its cores.
"""
    ]
    for name, figures in results.items():
        info, load = figures["machine"], figures["load"]
        average = figures["load_average"]
        command = (
            f"python -m benchmarks tracking_load --clients {load['clients']} --steps "
            f"{load['steps']} --metrics {load['metrics']} --workers {load['workers']}"
        )
        parts.append(
            f"""### {info["cpu"]}, {info["cores"]} cores, {info["memory_gib"]} GiB

`{name}`, {figures["date"]}: {load["clients"]} clients x {load["steps"]} steps x \
{load["metrics"]} metrics, {load["workers"]} uvicorn workers, MLflow {figures["mlflow"]}, \
PostgreSQL {figures["postgres"]}.
Command: `{command}`.
1-minute load average {average["before"]} before the run (other jobs on the machine) and \
{average["after"]} just after it (the run's own clients, server and PostgreSQL included).

{table(figures)}"""
        )
    return "\n".join(parts)
