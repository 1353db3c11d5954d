"""Segmentation metrics, all pooled over the pixels of a whole split.

Dice here is 2TP / (2TP + FP + FN) from summed pixel counts, the figure the reference report
quotes; for binary masks it is exactly torchmetrics' global F1 score (and per image, its
samplewise F1 score). An empty prediction of an empty mask scores 1: nothing was there and
nothing was claimed.
"""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)
from torchmetrics.functional.classification import binary_f1_score


def hard_predictions(logits: torch.Tensor) -> torch.Tensor:
    """Threshold logits at 0 (probability 0.5) into {0, 1} integers.

    Passing integers keeps torchmetrics from guessing whether its input is logits or probabilities.
    """
    return (logits > 0).to(torch.uint8)


def segmentation_metrics(prefix: str = "", full: bool = False) -> MetricCollection:
    """Dice alone for monitoring during training; IoU, precision and recall too with `full`."""
    options = {"zero_division": 1.0, "validate_args": False}
    metrics = {"dice": BinaryF1Score(**options)}
    if full:
        metrics |= {
            "iou": BinaryJaccardIndex(**options),
            "precision": BinaryPrecision(**options),
            "recall": BinaryRecall(**options),
        }
    return MetricCollection(metrics, prefix=prefix)


def per_image_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice of each image in a (N, 1, H, W) batch, as float32 (torchmetrics' F1 score per
    sample); 1.0 where mask and prediction are both empty. Any non-zero target is the person."""
    dice = binary_f1_score(
        hard_predictions(logits).flatten(1),
        target.flatten(1).bool(),
        multidim_average="samplewise",
        zero_division=1.0,
        validate_args=False,
    )
    return dice.reshape(len(logits))  # torchmetrics gives a 0-d tensor for a single image
