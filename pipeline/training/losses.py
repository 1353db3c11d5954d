"""Training losses: the reference's BCE, and BCE plus a soft Dice term.

`LOSSES` is the one list of them: a recipe's `loss` setting, its help and choices, tune's
search over it and the MLproject follow from it, so a new loss is a class and an entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


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


@dataclass(frozen=True)
class Loss:
    build: Callable[[], nn.Module]
    about: str  # what it is, in the setting's help


LOSSES: dict[str, Loss] = {
    "bce": Loss(nn.BCEWithLogitsLoss, "binary cross-entropy of the logits (the reference's)"),
    "bce_dice": Loss(BceDiceLoss, "BCE plus a soft Dice term pooled over the batch"),
}


def loss_help() -> str:
    return "the training loss: " + "; ".join(
        f"{name}, {loss.about}" for name, loss in LOSSES.items()
    )


def segmentation_loss(name: str) -> nn.Module:
    """The loss a recipe names."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}: use one of {', '.join(LOSSES)}")
    return LOSSES[name].build()
