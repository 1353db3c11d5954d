"""The network's input contract, shared by training and the logged model so both see one math."""

from __future__ import annotations

import torch


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W to the float [0, 1] tensor the network takes."""
    return images.float().div_(255)
