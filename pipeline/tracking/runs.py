"""Where runs go: the tracking store, reached and checked before any work, and waited for when
it is away.

Under `mlflow run` (or `main`) the run already exists and MLFLOW_RUN_ID names it; a step must
log there and never open a second run. Run by hand, a step opens its own run.

Every tracking URI is checked at the door, before any run opens, in seconds rather than after
MLflow's retries (about 100 s against a database that is down): an unknown scheme, a database
that does not answer or lacks its driver, a SQLite file in a folder that is missing or cannot
be written, a server that is away, refuses us or is not MLflow. Each ends as one line naming
the URI (never its password) and the fix.

A bare `postgresql://` URI means psycopg 3 to SQLAlchemy 2.1, which the project does not ship:
when psycopg 3 is missing and psycopg2 is installed, it is read as `postgresql+psycopg2://`.
The server image, the compose stack and the handling of concurrent writes
(pipeline/tracking/concurrent_writes.py) all use psycopg2, so the client does too.

MLflow creates (migrates) a fresh SQLite store with Alembic, and nothing serialises two
processes doing it: they fail, and may leave the store half-made. So whoever finds it first
makes it under a file lock beside it, and the others wait, then open it.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import time
from contextlib import ExitStack
from pathlib import Path

import mlflow
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import read_mlflow_creds

from pipeline.console import log
from pipeline.errors import PipelineError, TrackingAway, first_line
from pipeline.locks import hold
from pipeline.tracking.concurrent_writes import write_despite_races
from pipeline.tracking.tags import (
    EXPERIMENT_KIND_TAG,
)

DEFAULT_EXPERIMENT = "unet-person"
DEFAULT_STORE = "mlflow.db"
# The MLflow UI opens an experiment in its GenAI view unless told this is model training.
MODEL_TRAINING_KIND = "custom_model_development"  # the value of EXPERIMENT_KIND_TAG
SERVER_POLL_SECONDS = 2.0
# (connect, read) of each of the two requests that check a server: 14 s at worst in all.
SERVER_CHECK_TIMEOUT = (3.05, 4)
DATABASE_CONNECT_SECONDS = 5
STORE_LOCK_SECONDS = 300  # a fresh store takes seconds to make; a slow disk, longer
DATABASES = ("postgresql", "mysql", "mssql")  # the SQL stores MLflow knows besides SQLite
WORKING_FORMS = (
    "use a tracking server (http://host:5000 or https://...), a SQLite file "
    "(sqlite:///path/mlflow.db), a database (postgresql://user@host:5432/db), or unset "
    f"MLFLOW_TRACKING_URI to track into ./{DEFAULT_STORE}"
)
# The package that brings each database driver SQLAlchemy may ask for.
DRIVER_PACKAGES = {
    "psycopg2": "psycopg2-binary (pip install 'unet-person[postgres]')",
    "psycopg": "psycopg[binary], or write postgresql+psycopg2:// and pip install "
    "'unet-person[postgres]'",
    "pymysql": "pymysql (pip install pymysql)",
    "mysqldb": "mysqlclient (pip install mysqlclient), or write mysql+pymysql:// and pip "
    "install pymysql",
    "pyodbc": "pyodbc (pip install pyodbc)",
    "pymssql": "pymssql (pip install pymssql)",
}


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or a SQLite store in the working folder that `mlflow ui` there shows;
    a bare postgresql:// names the driver the project ships (the module's docstring says why)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_STORE}"
    scheme, separator, rest = uri.partition("://")
    if (
        scheme == "postgresql"
        and separator
        and not _installed("psycopg")
        and _installed("psycopg2")
    ):
        return f"postgresql+psycopg2://{rest}"
    return uri


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def configure_tracking() -> str:
    """Point MLflow at the tracking store and fail fast, with advice, when it cannot be reached."""
    uri = tracking_uri()
    check_store(uri)
    mlflow.set_tracking_uri(uri)
    has_target = any(
        os.environ.get(name)
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    )
    if not has_target:
        mlflow.set_experiment(DEFAULT_EXPERIMENT)
    return uri


def check_store(uri: str) -> None:
    """Reach the store `uri` names before any work, or raise a PipelineError saying what to fix.

    A SQLite store is also made here, if it is new, one process at a time.
    """
    scheme = uri.partition(":")[0].lower()
    backend = scheme.partition("+")[0]
    if scheme in ("http", "https"):
        _check_server(uri)
    elif backend == "sqlite":
        _make_sqlite_store(uri)
    elif backend in DATABASES:
        _check_database(uri)
    else:
        try:
            MlflowClient(tracking_uri=uri)  # knows databricks and the rest; refuses a typo
        except MlflowException as error:
            reason = f"({first_line(error.message).strip().split('. ')[0]})"
            if "unsupported URI" in error.message:
                reason = f"(MLflow knows no store of scheme {scheme!r})"
            raise PipelineError(
                f"MLFLOW_TRACKING_URI={masked(uri)} is not a tracking store {reason}: "
                f"{WORKING_FORMS}"
            ) from None


def masked(uri: str) -> str:
    """The URI with its password, if any, as ***: fit for messages and logs."""
    scheme, separator, rest = uri.partition("://")
    authority, slash, path = rest.partition("/")
    credentials, at, host = authority.rpartition("@")
    user, colon, password = credentials.partition(":")
    if not (separator and at and colon and password):
        return uri
    return f"{scheme}://{user}:***@{host}{slash}{path}"


def _check_database(uri: str) -> None:
    """Connect once, with a timeout: MLflow's own engine would retry for about 100 s."""
    import sqlalchemy
    from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError
    from sqlalchemy.pool import NullPool

    shown = masked(uri)
    try:
        url = sqlalchemy.engine.make_url(uri)
    except SQLAlchemyError as error:
        raise PipelineError(
            f"MLFLOW_TRACKING_URI={shown} is not a database URI ({first_line(error)}): "
            f"{WORKING_FORMS}"
        ) from None
    timeout_argument = {"mssql": "timeout"}.get(url.get_backend_name(), "connect_timeout")
    try:
        engine = sqlalchemy.create_engine(
            url, poolclass=NullPool, connect_args={timeout_argument: DATABASE_CONNECT_SECONDS}
        )
    except ImportError as error:  # ModuleNotFoundError too: the dialect's driver
        module = (error.name or str(error)).split(".")[0].lower()
        package = DRIVER_PACKAGES.get(module, f"the package that provides {module}")
        raise PipelineError(
            f"MLFLOW_TRACKING_URI={shown} needs the database driver {module}, which is not "
            f"installed: install {package}"
        ) from None
    except NoSuchModuleError:
        raise PipelineError(
            f"MLFLOW_TRACKING_URI={shown} names a database driver SQLAlchemy does not know "
            f"({url.drivername}): {WORKING_FORMS}"
        ) from None
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except SQLAlchemyError as error:
        reason = first_line(getattr(error, "orig", None) or error)
        if url.password:
            reason = reason.replace(str(url.password), "***")
        raise PipelineError(
            f"cannot reach the database of MLFLOW_TRACKING_URI={shown} ({reason}): start it, "
            "or fix the URI"
        ) from None
    finally:
        engine.dispose()


def _make_sqlite_store(uri: str) -> None:
    """Check the store's folder can hold it, then make the store if it is new, one process at a
    time: MLflow's migrations of a fresh store, run by two processes at once, break it."""
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    store = Path(database) if Path(database).is_absolute() else Path.cwd() / database
    folder = store.parent
    if not folder.is_dir():
        raise PipelineError(
            f"the folder {folder} of the tracking store MLFLOW_TRACKING_URI={masked(uri)} does "
            "not exist: create it, or fix the URI"
        )
    with ExitStack() as stack:
        try:  # creating the lock file is the test that the folder is writable
            stack.enter_context(
                hold(Path(f"{store}.lock"), STORE_LOCK_SECONDS, "creating the tracking store")
            )
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise PipelineError(
                f"the folder {folder} of the tracking store MLFLOW_TRACKING_URI={masked(uri)} "
                f"is not writable ({error.strerror}): make it writable, or fix the URI"
            ) from None
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)  # the tracking tables, made if missing
        client.search_registered_models(max_results=1)  # the registry's


def _check_server(uri: str) -> None:
    """Reach the server, make sure it is MLflow's and pass its auth before any work, rather than
    fail after an hour."""
    base = uri.rstrip("/")
    shown = masked(uri)
    try:
        requests.get(f"{base}/health", timeout=SERVER_CHECK_TIMEOUT).raise_for_status()
    except requests.RequestException as error:
        raise TrackingAway(
            f"cannot reach the MLflow tracking server at {shown} ({first_line(error)}). Start it "
            "(docker compose up -d), fix MLFLOW_TRACKING_URI, or unset it to track into "
            f"./{DEFAULT_STORE}"
        ) from error
    # The credentials MLflow's own client sends: the environment first, then the file
    # ~/.mlflow/credentials (which `mlflow run` mounts into the container).
    credentials = read_mlflow_creds()
    not_mlflow = PipelineError(
        f"the server at {shown} answers but is not an MLflow tracking server: check host and "
        "port of MLFLOW_TRACKING_URI"
    )
    try:
        response = requests.get(
            f"{base}/api/2.0/mlflow/experiments/search",
            params={"max_results": 1},
            auth=(
                (credentials.username, credentials.password or "") if credentials.username else None
            ),
            timeout=SERVER_CHECK_TIMEOUT,
        )
    except requests.RequestException as error:
        raise PipelineError(
            f"the MLflow tracking server at {shown} answered /health but not a search of its "
            f"experiments ({first_line(error)}): check the server's log"
        ) from error
    if response.status_code in (401, 403):
        raise PipelineError(
            f"the MLflow tracking server at {shown} refused access (HTTP {response.status_code}): "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server, "
            "or put them in ~/.mlflow/credentials (docs/docker.md, Basic auth)"
        )
    if response.status_code in (404, 405):
        raise not_mlflow
    if response.ok:
        try:
            answer = response.json()
        except ValueError:
            raise not_mlflow from None
        if not isinstance(answer, dict):
            raise not_mlflow


def wait_for_server(waiting: str) -> None:
    """Return once the tracking server answers, however long it is away.

    Training outlives outages (its metrics wait in the journal), so what needs the server after
    it, or between steps, waits too instead of throwing the work away.
    """
    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    away_since = None
    while True:
        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=10).raise_for_status()
        except requests.RequestException as error:
            if away_since is None:
                away_since = time.monotonic()
                log.warning("tracking server %s unreachable (%s): %s waits", uri, error, waiting)
            time.sleep(SERVER_POLL_SECONDS)
            continue
        if away_since is not None:
            log.warning("tracking server back after %.0f s", time.monotonic() - away_since)
        return


def mark_as_model_training(client: MlflowClient, experiment_id: str) -> None:
    """Have the UI open the experiment in its "Model training" view; a kind someone chose for
    the experiment is left as it is."""

    def kind_is_set() -> bool:
        return EXPERIMENT_KIND_TAG in client.get_experiment(experiment_id).tags

    if not kind_is_set():  # several steps may start at once on a fresh experiment
        write_despite_races(
            f"tag experiment {experiment_id} with {EXPERIMENT_KIND_TAG}",
            lambda: client.set_experiment_tag(
                experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
            ),
            settled=kind_is_set,
        )
