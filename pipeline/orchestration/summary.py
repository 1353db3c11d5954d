"""What `main` tells at its end: each step's run, the scores, the decision, where to look."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow

from pipeline.orchestration.workflow import PipelineOutcome
from pipeline.tracking.tags import DECISION_TAG, MODEL_VERSION_TAG, REASON_TAG
from pipeline.training_params import MainParams

UI_ADDRESS = "http://127.0.0.1:5000"
# MLflow 3.17's UI opens every page in its GenAI view unless the page's address asks for the
# "Model training" one: it keeps the view in the browser, not by the experiment's kind
# (mlflow/mlflow#24498).
MODEL_TRAINING_VIEW = "?workflowType=machine_learning"
# The UI's job runner serves MLflow's GenAI jobs, none of this pipeline's; stopping the UI by its
# pid leaves 8 of its processes running (MLflow 3.17). Off, the UI is one process tree that
# stops whole.
UI_WITHOUT_JOBS = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false"


def mlflow_program() -> str:
    """This environment's `mlflow` as a person types it here (`.venv/bin/mlflow`): the one on
    PATH may be another MLflow, or none."""
    program = Path(sys.executable).parent / "mlflow"
    if not program.exists():
        return "mlflow"
    try:
        return str(program.relative_to(Path.cwd()))
    except ValueError:
        return str(program)


def where_to_look(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The command (for a local store) and the page that show this run."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}{MODEL_TRAINING_VIEW}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri.rstrip('/')}/{page}"
    command = f"{UI_WITHOUT_JOBS} {mlflow_program()} ui --backend-store-uri {tracking_uri}"
    return f"{command}   then open {UI_ADDRESS}/{page}"


def pipeline_summary(outcome: PipelineOutcome, params: MainParams, run: mlflow.ActiveRun) -> str:
    width = max(len(step.entry_point) for step in outcome.steps)
    lines = [f"pipeline done: run {run.info.run_id}"]
    lines += [f"  {step.entry_point:<{width}}  {step.run_id}  {step.how}" for step in outcome.steps]
    lines.append(
        f"  test Dice {outcome.test_metrics['test_dice']:.4f}, "
        f"best val Dice {outcome.best_val_dice:.4f}"
    )
    if outcome.promotion:
        lines.append(
            f"  promote: {params.model_name} version {outcome.promotion[MODEL_VERSION_TAG]} "
            f"{outcome.promotion[DECISION_TAG]} ({outcome.promotion[REASON_TAG]})"
        )
    else:
        lines.append("  promote: skipped (--promote false)")
    look = where_to_look(mlflow.get_tracking_uri(), run.info.experiment_id, run.info.run_id)
    lines.append(f"  look at it: {look}")
    return "\n".join(lines)
