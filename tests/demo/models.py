"""The model the try-it page's tests serve: a varied net whose masks move with the threshold."""

from __future__ import annotations

import torch

from pipeline.model.unet import UNet
from tests.segmenters import varied_net

STEEPNESS = 400.0


def steep_net() -> UNet:
    """varied_net with its logits spread over a few units (its own stay within 0.003 of 0), so
    that thresholds a slider offers (0.3 to 0.6 here) give different masks of both classes."""
    net = varied_net()
    with torch.no_grad():
        net.outc.weight.mul_(STEEPNESS)
        net.outc.bias.mul_(STEEPNESS)
    return net
