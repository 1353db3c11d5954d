"""Does the ONNX export answer as the PyTorch network does? Logits within a tolerance, masks
(logit > 0) equal on nearly every pixel, on generated photos in the export's input layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.model.inputs import PixelNetwork
from pipeline.serving.onnx_runtime import OnnxNetwork

# float32 convolutions summed in another order (ONNX Runtime's MLAS kernels, not PyTorch's)
# differ in the last bits, growing with the logit's size: |onnx - torch| <= ATOL + RTOL * |torch|.
ATOL = 1e-4
RTOL = 1e-4
MIN_MASK_AGREEMENT = 0.999


@dataclass(frozen=True)
class Parity:
    max_abs_diff: float  # the largest |onnx - torch| over all logits
    worst_excess: float  # the largest |onnx - torch| - (ATOL + RTOL * |torch|); <= 0 passes
    mask_agreement: float  # the share of pixels whose mask (logit > 0) is the same

    @property
    def holds(self) -> bool:
        return self.worst_excess <= 0 and self.mask_agreement >= MIN_MASK_AGREEMENT


def check_photos(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 count x 3 x height x width photos: smooth colour fields with noise, so the network
    sees structure and both mask classes come up."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    photos = []
    for _ in range(count):
        phase, frequency = rng.uniform(0, 6, 3), rng.uniform(2, 8, 3)
        channels = [
            128 + 100 * np.sin(frequency[c] * (x if c % 2 else y) + phase[c]) for c in range(3)
        ]
        noisy = np.stack(channels) + rng.normal(0, 20, (3, height, width))
        photos.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return np.stack(photos)


def onnx_parity(net: torch.nn.Module, onnx_path: Path, photos: np.ndarray) -> Parity:
    """Compare `net` in PyTorch with its export at `onnx_path` on uint8 N x 3 x H x W photos."""
    images = torch.from_numpy(photos)
    with torch.inference_mode():
        expected = PixelNetwork(net).eval()(images).numpy()
    got = OnnxNetwork(onnx_path)(images).numpy()
    difference = np.abs(got - expected)
    return Parity(
        max_abs_diff=float(difference.max()),
        worst_excess=float((difference - (ATOL + RTOL * np.abs(expected))).max()),
        mask_agreement=float(np.mean((got > 0) == (expected > 0))),
    )
