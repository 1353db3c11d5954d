"""`ablate`: the architecture study as one parent run with a train and evaluate child per
variant and seed, all on one split and budget, summarised in the parent.

Finished runs are reused like `main`'s steps, so a study stopped half-way (or extended with
more seeds or variants) trains only what is missing when started again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from pipeline.console import log
from pipeline.errors import PipelineError
from pipeline.orchestration.project import StepInterrupted
from pipeline.orchestration.workflow import (
    TrainedModel,
    Workflow,
    absolute_path,
    prepare_data,
    train_and_evaluate,
    train_params,
)
from pipeline.study.summary import write_summary
from pipeline.study.variants import PlannedVariant
from pipeline.tracking.tags import SEED_TAG, STUDY_TAG, VARIANT_TAG
from pipeline.training_params import AblateParams, TrainingParams

ARTIFACT_FOLDER = "ablation"


def run_study(params: AblateParams) -> pd.DataFrame:
    """Train and evaluate every variant for every seed; return the per-variant summary."""
    plan, seeds = params.study_plan()
    log.info(
        "ablate: %d variants x %d seeds: %s", len(plan), len(seeds), ", ".join(v.name for v in plan)
    )
    workflow = Workflow(params.reuse, Path(absolute_path(params.runtime.checkpoint_dir)))
    data = prepare_data(workflow, params.data)
    rows, failures = [], []
    for variant in plan:
        for seed in seeds:
            name = f"{variant.name} seed {seed}"
            try:
                trained = train_and_evaluate(
                    workflow,
                    train_params(
                        data,
                        params.runtime,
                        TrainingParams(
                            recipe=variant.recipe,
                            changes=variant.settings,
                            seed=seed,
                            onnx=params.onnx,
                        ),
                    ),
                    data,
                    run_name=name,
                    labels={
                        VARIANT_TAG: variant.name,
                        SEED_TAG: str(seed),
                        STUDY_TAG: workflow.parent.info.run_id,
                    },
                )
            except StepInterrupted:
                raise  # stopped on purpose: the study stops (and picks up when run again)
            except PipelineError as error:
                # One variant that fails (out of memory, say) must not cost the others.
                log.error("ablate: %s failed: %s", name, error)
                failures.append(name)
                continue
            rows.append(_result(variant, seed, trained))
    if not rows:
        raise PipelineError(f"every run of the study failed ({', '.join(failures)}); see above")
    table = _publish(pd.DataFrame(rows), Path(absolute_path(params.output_dir)))
    if failures:
        raise PipelineError(
            f"the study is incomplete: {', '.join(failures)} failed (see above). The summary "
            "holds the rest; run the same command again to retry only what is missing"
        )
    return table


def _result(variant: PlannedVariant, seed: int, trained: TrainedModel) -> dict[str, Any]:
    train = trained.train
    metrics = train.data.metrics
    minutes = (train.info.end_time - train.info.start_time) / 60_000  # a finished run
    return {
        "variant": variant.name,
        "change": variant.description,
        "seed": seed,
        "test_dice": trained.test_metrics["test_dice"],
        "test_iou": trained.test_metrics.get("test_iou"),
        "best_val_dice": metrics.get("best_val_dice"),
        "epochs_trained": metrics.get("epochs_trained"),
        "train_minutes": minutes,
        "parameters_millions": metrics.get("parameters", float("nan")) / 1e6,
        "train_run_id": train.info.run_id,
        "evaluate_run_id": trained.evaluate.info.run_id,
        "model_uri": trained.model_uri,
    }


def _publish(runs: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """The summary files into `folder` and the parent run; mean test Dice per variant as
    metrics, so studies compare side by side in the MLflow UI."""
    table = write_summary(folder, runs)
    mlflow.log_artifacts(str(folder), ARTIFACT_FOLDER)
    mlflow.log_metrics(
        {f"test_dice.{row.variant}": row.test_dice_mean for row in table.itertuples()}
    )
    log.info("ablate: summary in %s and in the run's %s/ artifacts", folder, ARTIFACT_FOLDER)
    return table
