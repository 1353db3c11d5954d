"""The trained network as an MLflow model: logged as the Segmenter pyfunc, loaded from any URI.

The network's ONNX export is an artifact of the same logged model (`artifacts/unet.onnx`), not
a second model: one URI, one registry version and one set of metrics cover both, and the
Segmenter's runtime onnx finds the file where it finds the weights. A train step run with
`--onnx false` logs the model without it.
"""

from __future__ import annotations

import base64
import json
import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from PIL import Image

from pipeline.errors import PipelineError, first_line
from pipeline.export.onnx_export import export_onnx
from pipeline.images import encode_png
from pipeline.model.encoders import LIBRARY, NO_ENCODER
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.serving.segmenter import (
    ARCHITECTURE,
    DEFAULT_THRESHOLD,
    INPUT_COLUMN,
    MODEL_CODE,
    ONNX,
    RUNTIME,
    RUNTIMES,
    SIGNATURE,
    THRESHOLD,
    WEIGHTS,
    MissingOnnxExport,
    Segmenter,
    max_pixels_setting,
)
from pipeline.tracking.code_paths import staged_package
from pipeline.tracking.model_names import nearest_model
from pipeline.tracking.tags import MODEL_URI_TAG

MODEL_NAME = "model"
ONNX_FILE = "unet.onnx"
EXAMPLE_SIDE = 64


def _requirements(config: NetworkConfig) -> list[str]:
    """What serving the model needs, pinned to this environment (torch without its +cpu/+cu tag);
    a network with a pretrained encoder needs transformers too, which builds the backbone."""
    packages = ["numpy", "pandas", "pillow", "onnxruntime"]
    if config.encoder != NO_ENCODER:
        packages.append(LIBRARY)
    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        *(f"{name}=={version(name)}" for name in packages),
    ]


def log_segmentation_model(
    net: UNet, image_size: int, example: np.ndarray, onnx: bool = True
) -> ModelInfo:
    """Log `net` into the active run as the Segmenter pyfunc, with its ONNX export unless `onnx`
    is false, and with `example` (an H x W x 3 uint8 photo, shrunk to EXAMPLE_SIDE) as the input
    example the MLflow UI shows."""
    shrunk = Image.fromarray(example).resize((EXAMPLE_SIDE,) * 2, Image.Resampling.BILINEAR)
    example_input = pd.DataFrame(
        {INPUT_COLUMN: [base64.b64encode(encode_png(np.asarray(shrunk))).decode("ascii")]}
    )
    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(scratch) / "unet.pt"
        torch.save(net.cpu().state_dict(), weights)
        architecture = Path(scratch) / "unet.json"
        architecture.write_text(json.dumps({**net.config.to_dict(), "image_size": image_size}))
        artifacts = {WEIGHTS: weights, ARCHITECTURE: architecture}
        if onnx:
            artifacts[ONNX] = export_onnx(net, image_size, Path(scratch) / ONNX_FILE)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(MODEL_CODE),
            artifacts={key: str(path) for key, path in artifacts.items()},
            # Only the modules the Segmenter imports, in a pipeline/ folder of their own.
            code_paths=[str(staged_package(MODEL_CODE, Path(scratch) / "code"))],
            signature=SIGNATURE,
            input_example=(example_input, {THRESHOLD: DEFAULT_THRESHOLD}),
            pip_requirements=_requirements(net.config),
            # Declared so that a loader's model_config reaches the Segmenter at all; empty
            # leaves the choice to UNET_PERSON_RUNTIME, so `mlflow models serve` can make it.
            model_config={RUNTIME: ""},
        )
    mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    return info


def link_model_to_run(model_uri: str) -> None:
    """Tag the active run (main's, tune's) with the model a child step logged and list it among
    the run's outputs, so that the run's one row and page in the UI lead to it ("Logged
    models"); once, however often the run records it."""
    model_id = mlflow.models.get_model_info(model_uri).model_id
    run = mlflow.active_run()
    mlflow.set_tag(MODEL_URI_TAG, model_uri)
    client = mlflow.MlflowClient()
    outputs = client.get_run(run.info.run_id).outputs
    if not any(output.model_id == model_id for output in outputs.model_outputs):
        client.log_outputs(run.info.run_id, [LoggedModelOutput(model_id=model_id, step=0)])


def pixel_limit() -> int:
    """The photos' pixel limit (UNET_PERSON_MAX_PIXELS), or a bad setting as one line before
    loading a model fails on it with a traceback."""
    try:
        return max_pixels_setting()
    except ValueError as error:
        raise PipelineError(str(error)) from None


def load_predictor(model_uri: str, runtime: str = RUNTIMES[0]) -> mlflow.pyfunc.PyFuncModel:
    """Any MLflow model URI as a pyfunc whose network runs in `runtime` (torch or onnx); a bad
    URI becomes a message that says where to look."""
    try:
        predictor = mlflow.pyfunc.load_model(model_uri, model_config={RUNTIME: runtime})
    except MissingOnnxExport:
        raise _no_export(model_uri, runtime, "its artifacts hold no ONNX file") from None
    except (MlflowException, OSError) as error:
        raise PipelineError(
            f"cannot load model_uri={model_uri} ({first_line(error)}){nearest_model(model_uri)}; "
            "use runs:/<run_id>/model, models:/<model_id> or models:/<name>@<alias> as shown "
            "in the MLflow UI"
        ) from error
    # A model logged before the runtime choice existed ignores model_config: torch, silently.
    if getattr(_python_model(predictor), "runtime", RUNTIMES[0]) != runtime:
        raise _no_export(model_uri, runtime, "it was logged before train exported one")
    return predictor


def _no_export(model_uri: str, runtime: str, reason: str) -> PipelineError:
    return PipelineError(
        f"runtime={runtime} needs the model's ONNX export, and model_uri={model_uri} has none "
        f"({reason}): use --runtime torch, or write a .onnx file for ONNX Runtime with "
        f"`python -m pipeline export --model_uri {model_uri}`"
    )


def _python_model(predictor: mlflow.pyfunc.PyFuncModel) -> object | None:
    try:
        return predictor.unwrap_python_model()
    except MlflowException:
        return None


def segmenter_of(predictor: mlflow.pyfunc.PyFuncModel, model_uri: str) -> Segmenter:
    """The Segmenter inside a loaded model, for scoring whole arrays of photos at once."""
    model = _python_model(predictor)
    if not isinstance(model, Segmenter):
        raise PipelineError(
            f"model_uri={model_uri} is not a segmentation model logged by this pipeline's train "
            "step (a Segmenter pyfunc); models from before it take arrays, not photos: train "
            "again with `python -m pipeline train`"
        )
    return model
