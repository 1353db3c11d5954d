"""Entry point `tune`: a hyperparameter search whose every trial is a train step (Optuna)."""

from __future__ import annotations

import mlflow

from pipeline.entrypoints.runner import run_entry_point
from pipeline.orchestration.summary import where_to_look
from pipeline.orchestration.tuning import TuneOutcome, open_tune_study, run_tune
from pipeline.tracking.tags import DECISION_TAG, MODEL_VERSION_TAG, REASON_TAG
from pipeline.training_params import TuneParams

PARAMS = TuneParams


def summary(outcome: TuneOutcome, params: TuneParams, run: mlflow.ActiveRun) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in outcome.counts.items() if n)
    settings = ", ".join(f"{name}={value}" for name, value in outcome.best_params.items())
    lines = [
        f"tune done: run {run.info.run_id}, study {params.study_name} ({counts})",
        f"  best trial {outcome.best_number}: val Dice {outcome.best_value:.4f}, test Dice "
        f"{outcome.test_metrics['test_dice']:.4f}, run {outcome.best_run_id}",
        f"  its settings: {settings}",
    ]
    if outcome.promotion:
        lines.append(
            f"  promote: {params.model_name} version {outcome.promotion[MODEL_VERSION_TAG]} "
            f"{outcome.promotion[DECISION_TAG]} ({outcome.promotion[REASON_TAG]})"
        )
    tracking = mlflow.get_tracking_uri()
    experiment = run.info.experiment_id
    lines.append(f"  the study: {where_to_look(tracking, experiment, run.info.run_id)}")
    lines.append(f"  the best trial: {where_to_look(tracking, experiment, outcome.best_run_id)}")
    return "\n".join(lines)


def run(params: TuneParams) -> None:
    outcome = run_tune(params)
    print(summary(outcome, params, mlflow.active_run()), flush=True)


def main(argv: list[str] | None = None) -> int:
    # The study is opened before the run: a storage that is down, or a study of another
    # direction or space, leaves no run behind.
    return run_entry_point(__name__, PARAMS, run, argv, before_run=open_tune_study)
