"""Score a model on the test split: pooled metrics, per-image Dice spread, best and worst cases."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.console import progress
from pipeline.data.cache import Processed, open_split, read_manifest_text
from pipeline.errors import PipelineError
from pipeline.evaluation.figures import Section, captioned_sheet
from pipeline.evaluation.metrics import hard_predictions, per_image_dice, segmentation_metrics
from pipeline.serving.segmenter import Segmenter

QUANTILES = {"min": 0.0, "p05": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "max": 1.0}
EXTREMES = 8


@dataclass
class Evaluation:
    metrics: dict[str, float]
    per_image: pd.DataFrame
    best_and_worst: Image.Image


def evaluate(
    segmenter: Segmenter, cache: Processed, batch_size: int, tta: bool = False
) -> Evaluation:
    """Score the model on the test arrays through the logged model's own photo-to-logits path.

    Each array is a photo that path resizes to the model's image_size and back (nothing to do
    when the cache has that size), so the masks counted here are those `predict` and serving
    give for the same pictures.
    """
    if batch_size < 1:
        raise PipelineError(f"batch_size must be at least 1, got {batch_size}")
    images, masks = open_split(cache, "test")
    if len(images) == 0:
        raise PipelineError(f"the test split in {cache} is empty: rerun preprocess")
    pooled = segmentation_metrics("test_", full=True)
    loss_sum = 0.0
    dice = []
    for start in progress(range(0, len(images), batch_size), desc="evaluate", unit="batch"):
        logits = segmenter.logits(np.array(images[start : start + batch_size]), tta)
        target = torch.from_numpy(np.array(masks[start : start + batch_size])).unsqueeze(1)
        pooled.update(hard_predictions(logits), target)
        loss_sum += float(
            F.binary_cross_entropy_with_logits(logits, target.float(), reduction="sum")
        )
        dice.append(per_image_dice(logits, target))
    per_image_dice_values = torch.cat(dice).numpy()
    metrics = {name: float(value) for name, value in pooled.compute().items()}
    # Plain BCE, whatever loss the recipe trained with: named so, not as a peer of val_loss.
    metrics["test_bce"] = loss_sum / (len(masks) * int(np.prod(masks.shape[1:])))
    for name, quantile in QUANTILES.items():
        metrics[f"test_image_dice_{name}"] = float(np.quantile(per_image_dice_values, quantile))
    metrics["test_image_dice_mean"] = float(per_image_dice_values.mean())

    manifest = pd.read_csv(io.StringIO(read_manifest_text(cache)))
    per_image = manifest[manifest["split"] == "test"].sort_values("index").reset_index(drop=True)
    per_image["dice"] = per_image_dice_values
    per_image["foreground_fraction"] = [float(mask.mean()) for mask in masks]
    sheet = _best_and_worst(segmenter, images, masks, per_image, tta)
    return Evaluation(metrics, per_image, sheet)


def _best_and_worst(
    segmenter: Segmenter, images, masks, per_image: pd.DataFrame, tta: bool
) -> Image.Image:
    """The best images in the top section, the worst below, each beside its error overlay and
    captioned with its Dice and name."""
    ranked = per_image.sort_values("dice", ascending=False, kind="stable")
    total = len(ranked)
    count = min(EXTREMES, total // 2) or 1
    picks = [(f"best {count} of {total} test images (highest Dice first)", ranked[:count])]
    if total > 1:
        worst = ranked[::-1][:count]
        picks.append((f"worst {count} of {total} test images (lowest Dice first)", worst))
    chosen = np.concatenate([rows["index"].to_numpy() for _, rows in picks])
    chosen_images = np.array(images[chosen])
    chosen_masks = np.array(masks[chosen])
    predictions = hard_predictions(segmenter.logits(chosen_images, tta)).squeeze(1).numpy()
    sections = []
    start = 0
    for title, rows in picks:
        picked = slice(start, start + len(rows))
        start += len(rows)
        captions = [
            f"Dice {dice:.3f}  {Path(str(name)).stem}"
            for dice, name in zip(rows["dice"], rows["image"], strict=True)
        ]
        sections.append(
            Section(
                title, chosen_images[picked], chosen_masks[picked], predictions[picked], captions
            )
        )
    return captioned_sheet(sections, columns=EXTREMES // 2)
