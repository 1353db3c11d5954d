"""Training losses: the reference's BCE, and BCE plus a soft Dice term."""

from __future__ import annotations

import torch
from torch import nn

LOSSES = ("bce", "bce_dice")


class SoftDiceLoss(nn.Module):
    """1 - Dice of the probabilities, pooled over the whole batch like the monitored metric.

    Pooling (rather than a mean of per-image Dice) keeps images with tiny people from
    dominating the gradient, and matches 2TP / (2TP + FP + FN) from summed counts.
    """

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probabilities = torch.sigmoid(logits.float())
        overlap = (probabilities * target).sum()
        total = probabilities.sum() + target.sum()
        return 1 - (2 * overlap + self.smooth) / (total + self.smooth)


class BceDiceLoss(nn.Module):
    """BCE for well-calibrated pixels plus Dice for the overlap the model is judged on."""

    def __init__(self) -> None:
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss()
        self.dice = SoftDiceLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce(logits, target) + self.dice(logits, target)


def segmentation_loss(name: str) -> nn.Module:
    """The loss a recipe names: `bce` or `bce_dice`."""
    if name == "bce":
        return nn.BCEWithLogitsLoss()
    if name == "bce_dice":
        return BceDiceLoss()
    raise ValueError(f"unknown loss {name!r}: use bce or bce_dice")
