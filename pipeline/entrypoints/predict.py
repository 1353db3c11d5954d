"""Entry point `predict`: a mask and an overlay for every photo in a folder."""

from __future__ import annotations

from pathlib import Path

import mlflow

from pipeline.console import log
from pipeline.entrypoints.runner import run_entry_point
from pipeline.errors import PipelineError
from pipeline.params import PredictParams
from pipeline.prediction.photos import PREDICTED, SKIPPED, TABLE, predict_folder
from pipeline.tracking.models import load_predictor, pixel_limit, segmenter_of
from pipeline.tracking.tags import PREDICTED_WITH_TAG

PARAMS = PredictParams


def run(params: PredictParams) -> None:
    pixel_limit()
    model = load_predictor(params.model_uri, params.runtime)
    segmenter = segmenter_of(model, params.model_uri)  # refuse models that take arrays, not photos
    mlflow.set_tag(PREDICTED_WITH_TAG, model.metadata.model_id)
    output_dir = Path(params.output_dir).expanduser()
    report = predict_folder(
        model,
        Path(params.input_dir).expanduser(),
        output_dir,
        params.threshold,
        segmenter.max_pixels,
        params.tta,
    )
    predicted, skipped = report.count(PREDICTED), report.count(SKIPPED)
    mlflow.log_metrics({"photos": len(report.rows), "predicted": predicted, "skipped": skipped})
    mlflow.log_artifact(str(report.table))
    log.info(
        "%d masks and overlays in %s; skipped: %d (see %s)", predicted, output_dir, skipped, TABLE
    )
    if predicted == 0:
        raise PipelineError(
            f"none of the {len(report.rows)} files in input_dir={params.input_dir} is a readable "
            f"image; {report.table} says why for each"
        )


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(__name__, PARAMS, run, argv)
