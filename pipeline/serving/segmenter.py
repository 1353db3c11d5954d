"""The logged model: photos in, masks out, with all pre- and post-processing inside.

`mlflow models serve`, `predict` and `evaluate` all run this class, so they give the same mask
for the same photo. It holds the U-Net as a state_dict and its shape (artifacts), rebuilt with
`pipeline.model.unet.UNet`; the `pipeline` package travels with the model (`code_paths`), so
serving it needs no install of this repository.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from PIL import Image

from pipeline.model.inputs import to_model_input
from pipeline.model.unet import UNet
from pipeline.serving.images import ImageError, encode_png, square_pixels, upright_photo

INPUT_COLUMN = "image"
OUTPUT_COLUMN = "mask"
THRESHOLD = "threshold"
DEFAULT_THRESHOLD = 0.5
WEIGHTS = "weights"
ARCHITECTURE = "architecture"
MODEL_CODE = Path(__file__).with_name("model_code.py")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.string, INPUT_COLUMN)]),
    outputs=Schema([ColSpec(DataType.string, OUTPUT_COLUMN)]),
    params=ParamSchema([ParamSpec(THRESHOLD, DataType.double, DEFAULT_THRESHOLD)]),
)


def invalid(message: str) -> MlflowException:
    """An error the scoring server answers with HTTP 400 and this message."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x 1 x h x w logits at another size; left as they are when the size is the same."""
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class Segmenter(mlflow.pyfunc.PythonModel):
    """Base64 photos (column `image`) to base64 PNG masks (column `mask`) at each photo's size."""

    def load_context(self, context) -> None:
        shape = json.loads(Path(context.artifacts[ARCHITECTURE]).read_text())
        self.image_size = int(shape.pop("image_size"))
        net = UNet(**shape)
        weights = torch.load(context.artifacts[WEIGHTS], map_location="cpu", weights_only=True)
        net.load_state_dict(weights)
        # The CPU everywhere: a GPU's kernels round differently, and predict, serving and
        # evaluate must agree on every pixel wherever they run.
        self.net = net.eval()

    def logits(self, pixels: np.ndarray) -> torch.Tensor:
        """Logits at the pixels' own size for uint8 N x H x W x 3 photos of one size.

        The network sees each photo resized to image_size, as in training; its logits are
        resized back. At image_size both resizes are skipped, so evaluate's figures on the
        preprocessed test arrays are those of the served masks for the same photos.
        """
        height, width = pixels.shape[1:3]
        if (height, width) != (self.image_size, self.image_size):
            pixels = np.stack(
                [square_pixels(Image.fromarray(photo), self.image_size) for photo in pixels]
            )
        batch = torch.tensor(pixels).permute(0, 3, 1, 2)  # a copy: decoded photos are read-only
        with torch.inference_mode():
            logits = self.net(to_model_input(batch))
        return resize_logits(logits, (height, width))

    def mask(self, photo: Image.Image, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        """The (H, W) bool mask of an upright RGB photo: person where P(person) > threshold.

        Thresholding the logits at logit(threshold) is the same test without rounding the
        sigmoid, so at 0.5 it is exactly the `logits > 0` that evaluate's metrics count.
        """
        logits = self.logits(np.asarray(photo.convert("RGB"))[np.newaxis])
        return (logits[0, 0] > math.log(threshold / (1 - threshold))).numpy()

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        threshold = float((params or {}).get(THRESHOLD, DEFAULT_THRESHOLD))
        if not 0 < threshold < 1:
            raise invalid(f"param {THRESHOLD}={threshold} must be between 0 and 1 (exclusive)")
        masks = []
        for row, value in enumerate(model_input[INPUT_COLUMN]):
            photo = _photo(row, value)
            mask = self.mask(photo, threshold).astype(np.uint8) * 255
            masks.append(base64.b64encode(encode_png(mask)).decode("ascii"))
        return pd.DataFrame({OUTPUT_COLUMN: masks})


def _photo(row: int, value: Any) -> Image.Image:
    """Row `row` of column `image` as an upright RGB photo: base64 text, or raw bytes in-process."""
    if isinstance(value, str):
        try:
            value = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError) as error:
            raise invalid(
                f"row {row} of column '{INPUT_COLUMN}' is not base64 ({error}): send the image "
                "file's bytes base64-encoded, e.g. `base64 -w0 photo.jpg`"
            ) from None
    if not isinstance(value, bytes | bytearray):
        raise invalid(
            f"row {row} of column '{INPUT_COLUMN}' is a {type(value).__name__}: send the image "
            "file's bytes base64-encoded as a string"
        )
    try:
        return upright_photo(bytes(value))
    except ImageError as error:
        raise invalid(
            f"row {row} of column '{INPUT_COLUMN}' is {error}: send a PNG, JPEG or other image "
            "file that Pillow reads"
        ) from None
