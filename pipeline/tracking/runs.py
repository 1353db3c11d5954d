"""Where runs go and how each step opens the one run it logs into.

Under `mlflow run` (or `main`) the run already exists and MLFLOW_RUN_ID names it; a step must
log there and never open a second run. Run by hand, a step opens its own run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import mlflow
import requests
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.credentials import read_mlflow_creds

from pipeline.console import quiet_libraries
from pipeline.errors import PipelineError, first_line
from pipeline.params import as_text, convert, parse, shell_unquoted
from pipeline.tracking.code_version import code_digest
from pipeline.tracking.concurrent_writes import write_despite_races
from pipeline.tracking.journal import is_lasting_refusal
from pipeline.tracking.lease import close_abandoned_runs, is_rank_zero, lease, rank_variables

DEFAULT_EXPERIMENT = "unet-person"
DEFAULT_STORE = "mlflow.db"
ENTRY_POINT_TAG = "mlflow.project.entryPoint"
CODE_TAG = "unet_person.code_digest"
ERROR_TAG = "unet_person.error"
OUTPUT_DIGEST_TAG = "unet_person.output_digest"
OUTPUT_PATH_TAG = "unet_person.output_path"
INPUT_DIGEST_TAG = "unet_person.input_digest"
EVALUATED_MODEL_TAG = "unet_person.evaluated_model"
EVALUATED_MODEL_ID_TAG = "unet_person.evaluated_model_id"
MODEL_VERSION_TAG = "unet_person.model_version"
RECIPE_TAG = "unet_person.recipe"
RESOLVED_PREFIX = "resolved."
# The MLflow UI opens an experiment in its GenAI view unless told this is model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
SERVER_POLL_SECONDS = 2.0

log = logging.getLogger("unet_person")


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


def log_params_once(params) -> None:
    """Log params not yet on the run; ones already there (from `mlflow run`) must agree by value.

    MLflow refuses a second value for a key, and `1e-5` from the MLproject would clash with
    the `1e-05` Python prints, so equal values are left as they were logged.
    """
    run_id = mlflow.active_run().info.run_id
    logged = {
        name: shell_unquoted(text)
        for name, text in MlflowClient().get_run(run_id).data.params.items()
    }
    params_class = type(params)
    clashes = [
        f"{name}: run has {logged[name]!r}, step got {getattr(params, name)!r}"
        for name in logged.keys() & {spec.name for spec in dataclasses.fields(params)}
        if convert(params_class, name, logged[name]) != getattr(params, name)
    ]
    if clashes:
        raise PipelineError(f"run {run_id} was started with other parameters: {'; '.join(clashes)}")
    mlflow.log_params({key: value for key, value in as_text(params).items() if key not in logged})


def log_settings(recipe: str, settings) -> None:
    """Tag the recipe and log every setting it resolved to as `resolved.<name>` params, so a
    run's UI row shows what trained it even where its own params said "the recipe's"."""
    mlflow.set_tag(RECIPE_TAG, recipe)
    mlflow.log_params({RESOLVED_PREFIX + key: value for key, value in as_text(settings).items()})


@contextmanager
def step_run(entry_point: str, params) -> Iterator[mlflow.ActiveRun]:
    """The run this step logs into, tagged with its entry point and code version, held under
    its lease (pipeline/tracking/lease.py) from start to end."""
    configure_tracking()
    client = MlflowClient()
    given = os.environ.get("MLFLOW_RUN_ID")
    with ExitStack() as stack:
        if given:
            # Maybe another process's run at work: refused before it is touched, let alone ended.
            stack.enter_context(lease(client, given))
        run = stack.enter_context(mlflow.start_run(run_name=None if given else entry_point))
        if not given:
            stack.enter_context(lease(client, run.info.run_id))
        # Runs of killed processes, ours now held: a killed train run becomes resumable.
        close_abandoned_runs(client, run.info.experiment_id)
        mark_as_model_training(client, run.info.experiment_id)
        tags = run.data.tags
        mlflow.set_tags(
            {
                CODE_TAG: code_digest(),
                **({} if ENTRY_POINT_TAG in tags else {ENTRY_POINT_TAG: entry_point}),
            }
        )
        log_params_once(params)
        try:
            yield run
        except BaseException as error:
            if isinstance(error, PipelineError):
                mlflow.set_tag(ERROR_TAG, str(error)[:5000])
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
            raise
        # Ended while the lease is held, so the run is never RUNNING without a live holder.
        mlflow.end_run()


def run_entry_point(
    entry_point: str,
    params_class: type,
    body: Callable,
    argv: list[str] | None = None,
    check: Callable | None = None,
    other_ranks: Callable | None = None,
) -> int:
    """Parse and `check` the params, open the run, do the step.

    Bad params stop before any run opens, so a typo leaves no failed run behind. A
    PipelineError becomes one clear line and exit code 2, as does a tracking store that stays
    away longer than the MLflow client's retries.

    Launchers of a distributed fit start every rank with the same command: the first does the
    step in its run; the others do `other_ranks` instead and open, end and log nothing (a step
    without `other_ranks` does not run distributed).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_libraries()
    # The MLflow client's retries each log a warning; an outage is reported once, by us.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        params = parse(params_class, argv, prog=f"python -m pipeline {entry_point}")
        if check is not None:
            check(params)
        if not is_rank_zero():
            if other_ranks is None:
                raise PipelineError(
                    f"{entry_point} runs in one process, but was started as another rank of "
                    f"several ({rank_variables()}); only train runs distributed"
                )
            mlflow.set_tracking_uri(tracking_uri())  # to read inputs given as artifact URIs
            other_ranks(params)
            return 0
        with step_run(entry_point, params):
            body(params)
    except PipelineError as error:
        print(f"{entry_point}: error: {error}", file=sys.stderr)
        return 2
    except MlflowException as error:
        if is_lasting_refusal(error):
            raise
        print(
            f"{entry_point}: error: the tracking store failed ({first_line(error.message)}). "
            "What finished is kept: run the same command again once it is back",
            file=sys.stderr,
        )
        return 2
    return 0
