"""The trained network as an MLflow model: logged with a signature, loaded from any model URI."""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo
from torch import nn

from pipeline.errors import PipelineError

MODEL_NAME = "model"
MODEL_URI_TAG = "unet_person.model_uri"


def log_segmentation_model(net: nn.Module, image_size: int) -> ModelInfo:
    """Log `net` into the active run; it takes float32 N x 3 x H x W in [0, 1], returns logits.

    The example has two images so that the exported graph keeps the batch size free.
    """
    example = np.random.default_rng(0).random((2, 3, image_size, image_size), dtype=np.float32)
    net = net.eval().cpu().float()
    info = mlflow.pytorch.log_model(net, name=MODEL_NAME, input_example=example)
    mlflow.set_tag(MODEL_URI_TAG, info.model_uri)
    return info


def load_predictor(model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    """Any MLflow model URI as a pyfunc; a bad URI becomes a message that says where to look."""
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as error:
        raise PipelineError(
            f"cannot load model_uri={model_uri} ({error}); use runs:/<run_id>/model, "
            "models:/<model_id> or models:/<name>@<alias> as shown in the MLflow UI"
        ) from error
