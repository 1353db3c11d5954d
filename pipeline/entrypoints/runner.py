"""The command-line runner every entry point goes through: parse the params (every check
runs there, so a bad value stops before any run exists), open the step's one run, log the
params, do the step, and turn a PipelineError into one line and exit code 2.

Under `mlflow run` (or `main`) the run already exists and MLFLOW_RUN_ID names it; a step must
log there and never open a second run. Run by hand, a step opens its own run.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import disk
from pipeline.console import quiet_libraries
from pipeline.errors import (
    ENDED_EARLY_EXIT,
    TRACKING_AWAY_EXIT,
    EndedEarly,
    PipelineError,
    TrackingAway,
    first_line,
)
from pipeline.params import as_text, convert, flat_values, parse, shell_unquoted
from pipeline.processes import is_rank_zero, rank_variables
from pipeline.tracking.code_version import code_digest
from pipeline.tracking.journal import is_lasting_refusal
from pipeline.tracking.lease import close_abandoned_runs, lease
from pipeline.tracking.runs import configure_tracking, mark_as_model_training, tracking_uri
from pipeline.tracking.tags import (
    CODE_TAG,
    ENDED_EARLY_TAG,
    ENTRY_POINT_TAG,
    ERROR_TAG,
    RECIPE_TAG,
)

RESOLVED_PREFIX = "resolved."  # params, not tags: `resolved.<setting>` (log_settings)


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
    values = flat_values(params)
    clashes = [
        f"{name}: run has {logged[name]!r}, step got {values[name]!r}"
        for name in logged.keys() & values.keys()
        if convert(type(params), name, logged[name]) != values[name]
    ]
    if clashes:
        raise PipelineError(f"run {run_id} was started with other parameters: {'; '.join(clashes)}")
    mlflow.log_params({key: value for key, value in as_text(params).items() if key not in logged})


def log_settings(recipe: str, settings: Mapping[str, Any]) -> None:
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
            # A full disk anywhere is one line too, and the run says so.
            failure = disk.out_of_space_from(error) if disk.is_out_of_space(error) else error
            if isinstance(failure, PipelineError):
                mlflow.set_tag(ERROR_TAG, str(failure)[:5000])
            ended = RunStatus.FAILED
            if isinstance(failure, EndedEarly):
                mlflow.set_tag(ENDED_EARLY_TAG, str(failure)[:5000])
                ended = RunStatus.KILLED
            mlflow.end_run(RunStatus.to_string(ended))
            if failure is error:
                raise
            raise failure from error
        # Ended while the lease is held, so the run is never RUNNING without a live holder.
        mlflow.end_run()


def run_entry_point(
    module: str,
    params_class: type,
    body: Callable,
    argv: list[str] | None = None,
    other_ranks: Callable | None = None,
    before_run: Callable | None = None,
) -> int:
    """Parse the params, open the run, do the step: entry point `module`'s (its `__name__`).

    Every parameter is checked while parsing (the params classes' own checks), so a bad value
    stops before any run opens and a typo leaves no failed run behind. A
    PipelineError becomes one clear line and exit code 2; a tracking store that cannot be
    reached, or stays away longer than the MLflow client's retries, one line and
    TRACKING_AWAY_EXIT (the same command can run again once it is back).

    Launchers of a distributed fit start every rank with the same command: the first does the
    step in its run; the others do `other_ranks` instead and open, end and log nothing (a step
    without `other_ranks` does not run distributed).
    """
    entry_point = module.rpartition(".")[2]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_libraries()
    # The MLflow client's retries each log a warning; an outage is reported once, by us.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        params = parse(params_class, argv, prog=f"python -m pipeline {entry_point}")
        if not is_rank_zero():
            if other_ranks is None:
                raise PipelineError(
                    f"{entry_point} runs in one process, but was started as another rank of "
                    f"several ({rank_variables()}); only train runs distributed"
                )
            mlflow.set_tracking_uri(tracking_uri())  # to read inputs given as artifact URIs
            other_ranks(params)
            return 0
        if before_run is not None:
            before_run(params)
        with step_run(entry_point, params):
            body(params)
    except EndedEarly as ended:
        print(f"{entry_point}: {ended}", file=sys.stderr)
        return ENDED_EARLY_EXIT
    except PipelineError as error:
        print(f"{entry_point}: error: {error}", file=sys.stderr)
        return TRACKING_AWAY_EXIT if isinstance(error, TrackingAway) else 2
    except MlflowException as error:
        if is_lasting_refusal(error):
            raise
        print(
            f"{entry_point}: error: the tracking store failed ({first_line(error.message)}). "
            "What finished is kept: run the same command again once it is back",
            file=sys.stderr,
        )
        return TRACKING_AWAY_EXIT
    return 0
