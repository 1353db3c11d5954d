"""Entry point `predict_spark`: masks for a photo library on Apache Spark, with the model as
MLflow's Spark UDF."""

from __future__ import annotations

import shutil

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.console import log
from pipeline.entrypoints.runner import run_entry_point
from pipeline.errors import PipelineError
from pipeline.params import PredictSparkParams
from pipeline.prediction.photos import PREDICTED, SKIPPED
from pipeline.prediction.spark import SparkJob, predict_with_spark
from pipeline.tracking.model_names import registry_version
from pipeline.tracking.models import load_predictor, pixel_limit, segmenter_of
from pipeline.tracking.tags import MODEL_VERSION_TAG, PREDICTED_WITH_TAG

PARAMS = PredictSparkParams


def run(params: PredictSparkParams) -> None:
    max_pixels = pixel_limit()
    # Loaded here first, so a wrong URI or a model that takes no photos is one line before
    # Spark starts, and the run names the model the executors load.
    model = load_predictor(params.model_uri, params.runtime)
    segmenter_of(model, params.model_uri)
    mlflow.set_tag(PREDICTED_WITH_TAG, model.metadata.model_id)
    try:
        version = registry_version(mlflow.MlflowClient(), params.model_uri)
    except MlflowException:
        version = None
    if version is not None:
        mlflow.set_tag(MODEL_VERSION_TAG, version.version)
    report = predict_with_spark(
        SparkJob(
            input=params.input,
            output=params.output,
            model_uri=params.model_uri,
            threshold=params.threshold,
            tta=params.tta,
            runtime=params.runtime,
            overlays=params.overlays,
            spark_master=params.spark_master,
            env_manager=params.env_manager,
            partition_photos=params.partition_photos,
            batch_photos=params.batch_photos,
            max_pixels=max_pixels,
        )
    )
    photos, predicted = report.counts.total(), report.counts[PREDICTED]
    mlflow.log_metrics(
        {
            "photos": photos,
            "predicted": predicted,
            "skipped": report.counts[SKIPPED],
            "photos_per_s": photos / report.seconds,
            "job_s": report.seconds,
            "spark_start_s": report.start_seconds,
        }
    )
    mlflow.log_artifacts(str(report.tables))
    shutil.rmtree(report.tables)
    log.info(
        "%d masks in %s, %d skipped (see predictions.csv there); %.1f photos/s on %s",
        predicted,
        params.output,
        report.counts[SKIPPED],
        photos / report.seconds,
        params.spark_master,
    )
    if predicted == 0:
        raise PipelineError(
            f"none of the {photos} files in input={params.input} is a readable image; "
            f"predictions.csv in {params.output} says why for each"
        )


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(__name__, PARAMS, run, argv)
