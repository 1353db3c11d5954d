"""Entry point `main`: the whole pipeline under one parent run."""

from __future__ import annotations

import dataclasses
import sys

import mlflow

from pipeline.orchestration.summary import pipeline_summary
from pipeline.orchestration.workflow import run_pipeline
from pipeline.params import MainParams
from pipeline.tracking.runs import run_entry_point
from pipeline.training.recipes import resolve_settings


def run(params: MainParams) -> None:
    outcome = run_pipeline(params)
    print(pipeline_summary(outcome, params, mlflow.active_run()), flush=True)


def check(params: MainParams) -> None:
    """The recipe and its overrides, before download and preprocess do any work."""
    resolve_settings(params.recipe, dataclasses.asdict(params))


def main(argv: list[str] | None = None) -> int:
    return run_entry_point("main", MainParams, run, argv, check)


if __name__ == "__main__":
    sys.exit(main())
