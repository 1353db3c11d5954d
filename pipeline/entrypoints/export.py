"""Entry point `export`: a logged model's network as one ONNX file, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import mlflow

from pipeline.console import log
from pipeline.entrypoints.runner import run_entry_point
from pipeline.errors import PipelineError
from pipeline.export.onnx_export import export_onnx, spatial_multiple
from pipeline.params import ExportParams
from pipeline.serving.parity import ATOL, RTOL, check_photos, onnx_parity
from pipeline.tracking.models import load_predictor, segmenter_of
from pipeline.tracking.tags import EXPORTED_MODEL_TAG

CHECK_PHOTOS = 4

PARAMS = ExportParams


def run(params: ExportParams) -> None:
    output = Path(params.output_path).expanduser()
    if output.is_dir():
        raise PipelineError(
            f"output_path={params.output_path} is a folder: give the file to write, e.g. "
            f"{output / 'unet-person.onnx'}"
        )
    predictor = load_predictor(params.model_uri)
    segmenter = segmenter_of(predictor, params.model_uri)
    mlflow.set_tag(EXPORTED_MODEL_TAG, predictor.metadata.model_id)
    export_onnx(segmenter.net, segmenter.image_size, output, params.opset)
    # Checked at the size the Segmenter feeds, and at a wider one where the graph allows it.
    size, multiple = segmenter.image_size, spatial_multiple(segmenter.net)
    sizes = [(size, size)] + ([(size, size + multiple)] if size % multiple == 0 else [])
    parities = [
        onnx_parity(segmenter.net, output, check_photos(CHECK_PHOTOS, height, width))
        for height, width in sizes
    ]
    worst = max(parities, key=lambda parity: parity.worst_excess)
    mlflow.log_metrics(
        {
            "onnx_max_abs_logit_diff": max(parity.max_abs_diff for parity in parities),
            "onnx_mask_agreement": min(parity.mask_agreement for parity in parities),
        }
    )
    mlflow.log_artifact(str(output))
    if not all(parity.holds for parity in parities):
        raise PipelineError(
            f"the ONNX export of model_uri={params.model_uri} at opset={params.opset} does not "
            f"answer as PyTorch does (largest logit difference {worst.max_abs_diff:.3g}, allowed "
            f"{ATOL} + {RTOL} x |logit|; masks equal on {worst.mask_agreement:.4%} of pixels): "
            "try the default opset"
        )
    log.info(
        "wrote %s (opset %d); ONNX Runtime's logits within %.2g of PyTorch's",
        output,
        params.opset,
        max(parity.max_abs_diff for parity in parities),
    )


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(__name__, PARAMS, run, argv)
