"""The network's input contract, shared by training and the logged model so both see one math."""

from __future__ import annotations

import torch
from torch import nn


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 3 x H x W to the float [0, 1] tensor the network takes.

    Always a new tensor, divided in place only once it is ours: `.float()` of a float32 tensor
    is that same tensor, and dividing it in place would change the caller's pixels.
    """
    return images.to(torch.float32, copy=True).div_(255)


class PixelNetwork(nn.Module):
    """A network that takes uint8 photos: the input contract above inside the module, so the
    Segmenter and the ONNX export (which traces this) both start from the photo's bytes."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(to_model_input(images))
