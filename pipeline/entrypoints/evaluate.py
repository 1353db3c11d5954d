"""Entry point `evaluate`: score any MLflow model on the test split and log the evidence."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import mlflow

from pipeline.console import log
from pipeline.data.cache import processed_input, read_cache_record
from pipeline.data.run_inputs import log_split_inputs
from pipeline.entrypoints.runner import run_entry_point
from pipeline.evaluation.evaluate import evaluate
from pipeline.evaluation.figures import dice_histogram
from pipeline.params import EvaluateParams
from pipeline.tracking.models import load_predictor, segmenter_of
from pipeline.tracking.tags import EVALUATED_MODEL_ID_TAG, EVALUATED_MODEL_TAG, INPUT_DIGEST_TAG

PARAMS = EvaluateParams


def run(params: EvaluateParams) -> None:
    cache = processed_input(params.data_dir, "data_dir")
    record = read_cache_record(cache)
    predictor = load_predictor(params.model_uri)
    segmenter = segmenter_of(predictor, params.model_uri)
    # The model id names the model whatever URI it was given by, so promote can reuse this score.
    mlflow.set_tags(
        {
            INPUT_DIGEST_TAG: record["digest"],
            EVALUATED_MODEL_TAG: params.model_uri,
            EVALUATED_MODEL_ID_TAG: predictor.metadata.model_id,
        }
    )
    test_split = log_split_inputs(cache, record, ("test",))["test"]
    result = evaluate(segmenter, cache, params.batch_size, params.tta)
    # Linked to the logged model and to the test split, the metrics show on the model's page in
    # the MLflow UI, under the dataset they were measured on ("Datasets used").
    mlflow.log_metrics(result.metrics, model_id=predictor.metadata.model_id, dataset=test_split)
    log.info(
        "test Dice %.4f, IoU %.4f, BCE %.4f on %d images",
        result.metrics["test_dice"],
        result.metrics["test_iou"],
        result.metrics["test_bce"],
        len(result.per_image),
    )
    with tempfile.TemporaryDirectory() as scratch:
        table = Path(scratch) / "per_image.csv"
        result.per_image.to_csv(table, index=False)
        mlflow.log_artifact(str(table))
    mlflow.log_image(result.best_and_worst, "best_and_worst.png")
    histogram = dice_histogram(result.per_image["dice"].to_numpy(), result.metrics["test_dice"])
    mlflow.log_figure(histogram, "dice_histogram.png")


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(__name__, PARAMS, run, argv)
