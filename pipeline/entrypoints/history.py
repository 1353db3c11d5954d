"""Command `history`: every move of a model's alias, oldest first, from the promote runs."""

from __future__ import annotations

import sys

from mlflow.exceptions import MlflowException

from pipeline.errors import PipelineError, first_line
from pipeline.params import HistoryParams, parse
from pipeline.registry.history import history_table

PARAMS = HistoryParams


def main(argv: list[str] | None = None) -> int:
    """Print the table; no run is opened, since reading the record changes nothing."""
    try:
        params = parse(PARAMS, argv, prog="python -m pipeline history")
        print(history_table(params.model_name, params.alias))
    except PipelineError as error:
        print(f"history: error: {error}", file=sys.stderr)
        return 2
    except MlflowException as error:
        failure = first_line(error.message)
        print(f"history: error: the tracking store failed ({failure})", file=sys.stderr)
        return 2
    return 0
