"""Writes to the tracking store that other processes may make at the same moment."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mlflow.exceptions import MlflowException

from pipeline.errors import PipelineError

# A write that another process inserts at the same moment: tries, and the pause before try n is
# n times this (2 s in all), ample for a clash that lasts one transaction.
WRITE_ATTEMPTS = 5
WRITE_RETRY_SECONDS = 0.2

log = logging.getLogger("unet_person")


def write_despite_races(what: str, write: Callable[[], None], settled: Callable[[], bool]) -> None:
    """Run a tracking or registry write that another process may make at the same moment.

    MLflow 3.17's SQL store writes a tag (of an experiment, a model version) or an alias with
    `session.merge`: it reads the row, then inserts or updates it, so two processes that both
    find no row both insert and one fails on the table's primary key. The store wraps that
    IntegrityError in an MlflowException (BAD_REQUEST; through the server, HTTP 400 naming
    psycopg2's UniqueViolation, which MLflow's HTTP client does not retry). The failed write
    changed nothing: stop when `settled` says the other process already wrote what we wanted,
    else try again, when the row exists and the write becomes an update.
    """
    failure: MlflowException | None = None
    for attempt in range(WRITE_ATTEMPTS):
        time.sleep(WRITE_RETRY_SECONDS * attempt)
        try:
            write()
            return
        except MlflowException as error:
            if settled():
                log.info("another process did %s", what)
                return
            log.info("could not %s (try %d): %s", what, attempt + 1, error)
            failure = error
    raise PipelineError(
        f"cannot {what} after {WRITE_ATTEMPTS} tries ({failure}); run the command again"
    ) from failure
