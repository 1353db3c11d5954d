"""Entry point `main`: the whole pipeline under one parent run."""

from __future__ import annotations

import mlflow

from pipeline.entrypoints.runner import run_entry_point
from pipeline.orchestration.summary import pipeline_summary
from pipeline.orchestration.workflow import run_pipeline
from pipeline.training_params import MainParams

PARAMS = MainParams


def run(params: MainParams) -> None:
    outcome = run_pipeline(params)
    print(pipeline_summary(outcome, params, mlflow.active_run()), flush=True)


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(__name__, PARAMS, run, argv)
