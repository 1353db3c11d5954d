"""The tensor form of one sample, shared by the arrays' and the shards' datasets; apart from
cache.py so that reading a record (promote, reuse) does not import torch."""

from __future__ import annotations

import numpy as np
import torch


def as_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample as the loaders give it in either format: image 3xHxW, mask 1xHxW, uint8."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1), torch.from_numpy(
        np.array(mask)
    ).unsqueeze(0)
