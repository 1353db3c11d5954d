"""Command `history`: every move of a model's alias, oldest first, from the promote runs."""

from __future__ import annotations

import sys

from mlflow.exceptions import MlflowException

from pipeline.errors import PipelineError, first_line
from pipeline.params import HistoryParams, parse
from pipeline.registry.history import history_table
from pipeline.registry.promote import check_name
from pipeline.registry.versions import check_alias


def main(argv: list[str] | None = None) -> int:
    """Print the table; no run is opened, since reading the record changes nothing."""
    try:
        params = parse(HistoryParams, argv, prog="python -m pipeline history")
        check_name(params.model_name)
        check_alias(params.alias)
        print(history_table(params.model_name, params.alias))
    except PipelineError as error:
        print(f"history: error: {error}", file=sys.stderr)
        return 2
    except MlflowException as error:
        failure = first_line(error.message)
        print(f"history: error: the tracking store failed ({failure})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
