"""Where runs go: the tracking store, reached and checked before any work, and waited for when
it is away.

Under `mlflow run` (or `main`) the run already exists and MLFLOW_RUN_ID names it; a step must
log there and never open a second run. Run by hand, a step opens its own run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import mlflow
import requests
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import read_mlflow_creds

from pipeline.console import log
from pipeline.errors import PipelineError
from pipeline.tracking.concurrent_writes import write_despite_races
from pipeline.tracking.tags import (
    EXPERIMENT_KIND_TAG,
)

DEFAULT_EXPERIMENT = "unet-person"
DEFAULT_STORE = "mlflow.db"
# The MLflow UI opens an experiment in its GenAI view unless told this is model training.
MODEL_TRAINING_KIND = "custom_model_development"  # the value of EXPERIMENT_KIND_TAG
SERVER_POLL_SECONDS = 2.0


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or a SQLite store in the working folder that `mlflow ui` there shows."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_STORE}"


def configure_tracking() -> str:
    """Point MLflow at the tracking store and fail fast, with advice, when it cannot be reached."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    has_target = any(
        os.environ.get(name)
        for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")
    )
    if not has_target:
        mlflow.set_experiment(DEFAULT_EXPERIMENT)
    return uri


def _check_server(uri: str) -> None:
    """Reach the server and pass its auth before any work, rather than fail after an hour."""
    base = uri.rstrip("/")
    try:
        requests.get(f"{base}/health", timeout=10).raise_for_status()
    except requests.RequestException as error:
        raise PipelineError(
            f"cannot reach the MLflow tracking server at {uri} ({error}). Start it "
            "(docker compose up -d), fix MLFLOW_TRACKING_URI, or unset it to track into "
            f"./{DEFAULT_STORE}"
        ) from error
    # The credentials MLflow's own client sends: the environment first, then the file
    # ~/.mlflow/credentials (which `mlflow run` mounts into the container).
    credentials = read_mlflow_creds()
    response = requests.get(
        f"{base}/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        auth=(credentials.username, credentials.password or "") if credentials.username else None,
        timeout=30,
    )
    if response.status_code in (401, 403):
        raise PipelineError(
            f"the MLflow tracking server at {uri} refused access (HTTP {response.status_code}): "
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server, "
            "or put them in ~/.mlflow/credentials (see README, Basic auth)"
        )


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
