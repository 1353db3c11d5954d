"""The Segmenter's network run by ONNX Runtime on the CPU: the logged model's ONNX export,
called like the PyTorch network (uint8 N x 3 x H x W in, logits out), so everything around it
in the Segmenter (resizing, thresholding, PNG) is one code path for both runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import torch

from pipeline.export.onnx_export import IMAGES, LOGITS


class OnnxNetwork:
    """An ONNX Runtime session on the CPU, with PyTorch tensors in and out."""

    def __init__(self, path: Path) -> None:
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run([LOGITS], {IMAGES: np.ascontiguousarray(images.numpy())})
        return torch.from_numpy(logits)
