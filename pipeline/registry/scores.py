"""A model's test Dice on a split: evaluate's figure when one exists, else measured here.

Both models in a promotion are scored on the same split (the same preprocess digest), so the
comparison is between equals; a figure from another split is never reused.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from pipeline.console import log
from pipeline.data.cache import Processed
from pipeline.tracking.tags import EVALUATED_MODEL_ID_TAG, INPUT_DIGEST_TAG

MEASURED_HERE = "this run"


@dataclass(frozen=True)
class Score:
    dice: float
    source: str  # the evaluate run that measured it, or MEASURED_HERE


def finished_evaluation(
    client: MlflowClient, model_id: str, digest: str, experiment_ids: list[str]
) -> Run | None:
    """The newest finished evaluate run of this model on this split that logged test_dice,
    measured as the model serves by default: without test-time augmentation."""
    runs = client.search_runs(
        experiment_ids,
        f"tags.`{EVALUATED_MODEL_ID_TAG}` = '{model_id}' and tags.`{INPUT_DIGEST_TAG}` = "
        f"'{digest}' and attributes.status = '{RunStatus.to_string(RunStatus.FINISHED)}'",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    return next(
        (
            run
            for run in runs
            if "test_dice" in run.data.metrics and run.data.params.get("tta", "false") == "false"
        ),
        None,
    )


def score(
    client: MlflowClient,
    model_uri: str,
    model_id: str,
    cache: Processed,
    digest: str,
    batch_size: int,
) -> Score:
    """Test Dice of the model at `model_uri` on the split in `cache` (digest `digest`).

    Evaluate runs are looked for in the model's experiment and in the active run's.
    """
    experiment_ids = {client.get_logged_model(model_id).experiment_id}
    if mlflow.active_run() is not None:
        experiment_ids.add(mlflow.active_run().info.experiment_id)
    found = finished_evaluation(client, model_id, digest, sorted(experiment_ids))
    if found is not None:
        log.info("%s: test Dice from evaluate run %s", model_uri, found.info.run_id)
        return Score(found.data.metrics["test_dice"], found.info.run_id)
    log.info("%s: no evaluate run on this split; scoring it on the test split", model_uri)
    # Imported only here: a promote that finds evaluate's figures (main's always does) needs no
    # torch, which would double the step's start-up.
    from pipeline.evaluation.evaluate import evaluate
    from pipeline.tracking.models import load_predictor, segmenter_of

    segmenter = segmenter_of(load_predictor(model_uri), model_uri)
    return Score(evaluate(segmenter, cache, batch_size).metrics["test_dice"], MEASURED_HERE)
