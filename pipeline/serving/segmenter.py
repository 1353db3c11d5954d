"""The logged model: photos in, masks out, with all pre- and post-processing inside.

`mlflow models serve`, `predict` and `evaluate` all run this class, so they give the same mask
for the same photo. It holds the U-Net as a state_dict and its shape (artifacts), rebuilt with
`pipeline.model.unet.UNet`; the modules of the `pipeline` package this class imports travel with
the model (`code_paths`, see `pipeline.tracking.code_paths`), so serving it needs no install of
this repository.

The network runs in PyTorch or, from the ONNX export logged beside the weights, in ONNX Runtime
(`runtime`: predict's --runtime, or UNET_PERSON_RUNTIME for `mlflow models serve`); only the
network's call differs, so both runtimes share every step around it.

A photo's size is the client's choice, so the memory it costs is bounded twice: photos over the
server's pixel limit (UNET_PERSON_MAX_PIXELS) are refused from their header, and the mask is made
at about one byte a pixel beyond the decoded photo (`threshold_upsampled`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

from pipeline.errors import PipelineError
from pipeline.images import (
    BAND_PIXELS,
    DEFAULT_MAX_PIXELS,
    ImageError,
    TooManyPixels,
    encode_png,
    square_pixels,
    upright_photo,
)
from pipeline.model.inputs import PixelNetwork
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.serving import RUNTIMES

if TYPE_CHECKING:  # imported where used: runtime torch never needs onnxruntime
    from pipeline.serving.onnx_runtime import OnnxNetwork

INPUT_COLUMN = "image"
OUTPUT_COLUMN = "mask"
THRESHOLD = "threshold"
DEFAULT_THRESHOLD = 0.5
# Test-time augmentation: the logits of each photo and of its mirror image, mirrored back,
# averaged. A person is a person either way round, so the mask of a mirrored photo is then
# exactly the mirrored mask; it costs a second pass of the network.
FLIP_TTA = "tta"
WEIGHTS = "weights"
ARCHITECTURE = "architecture"
ONNX = "onnx"
RUNTIME = "runtime"

RUNTIME_VARIABLE = "UNET_PERSON_RUNTIME"
MODEL_CODE = Path(__file__).with_name("model_code.py")
MAX_PIXELS_VARIABLE = "UNET_PERSON_MAX_PIXELS"

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.string, INPUT_COLUMN)]),
    outputs=Schema([ColSpec(DataType.string, OUTPUT_COLUMN)]),
    params=ParamSchema(
        [
            ParamSpec(THRESHOLD, DataType.double, DEFAULT_THRESHOLD),
            ParamSpec(FLIP_TTA, DataType.boolean, False),
        ]
    ),
)


def invalid(message: str) -> MlflowException:
    """An error the scoring server answers with HTTP 400 and this message."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def max_pixels_setting() -> int:
    """The pixel limit per photo: UNET_PERSON_MAX_PIXELS, else DEFAULT_MAX_PIXELS.

    It is read where the model is loaded (the server, or predict's process) and is not a
    request param, so a client cannot raise it.
    """
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ValueError(
            f"{MAX_PIXELS_VARIABLE}={text!r} is not a positive whole number of pixels: set it to "
            f"e.g. 100000000 for photos up to 100 megapixels, or unset it for the default "
            f"{DEFAULT_MAX_PIXELS}"
        )
    return limit


class MissingOnnxExport(PipelineError):
    """runtime onnx for a model logged before train exported the network to ONNX."""


def runtime_setting(model_config: dict[str, Any] | None) -> str:
    """The network's runtime: model_config's `runtime` (what predict passes), else
    UNET_PERSON_RUNTIME (what `mlflow models serve` can be given), else torch."""
    runtime = (model_config or {}).get(RUNTIME) or os.environ.get(RUNTIME_VARIABLE, "").strip()
    if not runtime:
        return RUNTIMES[0]
    if runtime not in RUNTIMES:
        raise ValueError(
            f"runtime {runtime!r} (model_config or {RUNTIME_VARIABLE}) is not one of "
            f"{', '.join(RUNTIMES)}: torch runs the network in PyTorch, onnx its ONNX export in "
            "ONNX Runtime"
        )
    return runtime


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x 1 x h x w logits at another size; left as they are when the size is the same."""
    if tuple(logits.shape[-2:]) == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def sample_positions(size: int) -> torch.Tensor:
    """Where output pixel i of `size` samples its source for `F.grid_sample` (align_corners
    False): the centre (i + 0.5) / size of the source's extent, in [-1, 1]."""
    return (torch.arange(size, dtype=torch.float64) * 2 + 1) / size - 1


def threshold_upsampled(logits: np.ndarray, size: tuple[int, int], cut: float) -> np.ndarray:
    """`F.interpolate(logits, size, mode="bilinear", align_corners=False) > cut` for (h, w) float32
    logits, as an (H, W) bool mask, without the full-size logits.

    Each band of output rows samples the logits bilinearly at its pixels' positions
    (`F.grid_sample`, border-clamped as interpolate clamps) and is thresholded straight into
    the mask, so the mask's byte a pixel is all that grows with the photo. The sampling is done
    in float64: it agrees with interpolate's float32 but where a logit lies within rounding of
    the cut (tests/serving/test_segmenter.py states how close).
    """
    height, width = size
    source = torch.from_numpy(logits).to(torch.float64)[None, None]
    columns, rows = sample_positions(width), sample_positions(height)
    mask = np.empty(size, dtype=bool)
    band_rows = max(1, BAND_PIXELS // width)
    with torch.inference_mode():
        for top in range(0, height, band_rows):
            band = rows[top : top + band_rows]
            grid = torch.stack(torch.broadcast_tensors(columns[None, :], band[:, None]), dim=-1)
            sampled = F.grid_sample(
                source, grid[None], mode="bilinear", padding_mode="border", align_corners=False
            )
            mask[top : top + len(band)] = (sampled[0, 0] > cut).numpy()
    return mask


class Segmenter(mlflow.pyfunc.PythonModel):
    """Base64 photos (column `image`) to base64 PNG masks (column `mask`) at each photo's size."""

    def load_context(self, context) -> None:
        shape = json.loads(Path(context.artifacts[ARCHITECTURE]).read_text())
        self.image_size = int(shape.pop("image_size"))
        self.max_pixels = max_pixels_setting()
        self.runtime = runtime_setting(getattr(context, "model_config", None))
        if self.runtime == "onnx":
            self.network = _onnx_network(context.artifacts)
            return
        net = UNet(NetworkConfig.from_dict(shape))
        weights = torch.load(context.artifacts[WEIGHTS], map_location="cpu", weights_only=True)
        net.load_state_dict(weights)
        # The CPU everywhere: a GPU's kernels round differently, and predict, serving and
        # evaluate must agree on every pixel wherever they run.
        self.net = net.eval()
        self.network = PixelNetwork(self.net).eval()

    def logits(self, pixels: np.ndarray, tta: bool = False) -> torch.Tensor:
        """Logits at the pixels' own size for uint8 N x H x W x 3 photos of one size; with
        `tta`, averaged with those of the mirrored photos (FLIP_TTA).

        The network sees each photo resized to image_size, as in training; its logits are
        resized back. At image_size both resizes are skipped, so evaluate's figures on the
        preprocessed test arrays are those of the served masks for the same photos.
        """
        height, width = pixels.shape[1:3]
        if (height, width) != (self.image_size, self.image_size):
            pixels = np.stack(
                [square_pixels(Image.fromarray(photo), self.image_size) for photo in pixels]
            )
        return resize_logits(self._network_logits(pixels, tta), (height, width))

    def _network_logits(self, pixels: np.ndarray, tta: bool = False) -> torch.Tensor:
        """N x 1 x S x S logits of uint8 N x S x S x 3 pixels, S being image_size."""
        batch = torch.tensor(pixels).permute(0, 3, 1, 2)  # a copy: decoded photos are read-only
        with torch.inference_mode():
            logits = self.network(batch)
            if tta:
                logits = (logits + self.network(batch.flip(-1)).flip(-1)) / 2
        return logits

    def mask(
        self, photo: Image.Image, threshold: float = DEFAULT_THRESHOLD, tta: bool = False
    ) -> np.ndarray:
        """The (H, W) bool mask of an upright RGB photo: person where P(person) > threshold.

        The photo is resized for the network as `logits` resizes it, without a copy at full
        size, and the logits come back to its size through `threshold_upsampled`, which gives
        the thresholded `resize_logits`. Thresholding the logits at logit(threshold) is the same
        test without rounding the sigmoid, so at 0.5 it is exactly evaluate's `logits > 0`.
        """
        small = square_pixels(photo, self.image_size)
        logits = self._network_logits(small[np.newaxis], tta)[0, 0].numpy()
        cut = math.log(threshold / (1 - threshold))
        return threshold_upsampled(logits, (photo.height, photo.width), cut)

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        threshold = float((params or {}).get(THRESHOLD, DEFAULT_THRESHOLD))
        if not 0 < threshold < 1:
            raise invalid(f"param {THRESHOLD}={threshold} must be between 0 and 1 (exclusive)")
        tta = (params or {}).get(FLIP_TTA, False)
        if not isinstance(tta, bool | np.bool_):
            raise invalid(f"param {FLIP_TTA}={tta!r} must be true or false")
        masks = []
        for row, value in enumerate(model_input[INPUT_COLUMN]):
            # The photo is let go once its mask is made, before the PNG is.
            mask = self.mask(_photo(row, value, self.max_pixels), threshold, bool(tta))
            png = encode_png(np.multiply(mask, np.uint8(255)))
            masks.append(base64.b64encode(png).decode("ascii"))
        return pd.DataFrame({OUTPUT_COLUMN: masks})


def _onnx_network(artifacts: dict[str, str]) -> OnnxNetwork:
    """ONNX Runtime on the model's export; imported here, so runtime torch never needs it."""
    from pipeline.serving.onnx_runtime import OnnxNetwork

    if ONNX not in artifacts:
        raise MissingOnnxExport(
            "it was logged before train exported one; serve it with runtime torch, or write a "
            ".onnx file for ONNX Runtime with `python -m pipeline export --model_uri <its URI>`"
        )
    return OnnxNetwork(Path(artifacts[ONNX]))


def _photo(row: int, value: Any, max_pixels: int) -> Image.Image:
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
        return upright_photo(bytes(value), max_pixels)
    except TooManyPixels as error:
        raise invalid(
            f"row {row} of column '{INPUT_COLUMN}' is {error}: send a photo of at most "
            f"{max_pixels} pixels (the server's limit, set by its environment variable "
            f"{MAX_PIXELS_VARIABLE})"
        ) from None
    except ImageError as error:
        raise invalid(
            f"row {row} of column '{INPUT_COLUMN}' is {error}: send a PNG, JPEG or other image "
            "file that Pillow reads"
        ) from None
