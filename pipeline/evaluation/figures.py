"""Pictures of predictions that show at a glance where the model is right and wrong."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from pipeline.serving.images import PERSON_TINT as HIT  # person found: predict's green too
from pipeline.serving.images import tint

FALSE_ALARM = np.array([230, 40, 40], dtype=np.float32)  # background called person
MISS = np.array([40, 90, 240], dtype=np.float32)  # person missed


def error_overlay(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Tint an (H, W, 3) uint8 image: green hits, red false alarms, blue misses."""
    truth = truth.astype(bool)
    prediction = prediction.astype(bool)
    return tint(
        image,
        [
            (truth & prediction, HIT),
            (~truth & prediction, FALSE_ALARM),
            (truth & ~prediction, MISS),
        ],
    )


def tile_grid(tiles: list[np.ndarray], columns: int, gap: int = 2) -> Image.Image:
    """Lay equal-sized (H, W, 3) tiles out row by row on a white sheet."""
    if not tiles:
        raise ValueError("tile_grid needs at least one tile")
    height, width = tiles[0].shape[:2]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    sheet = np.full(
        (rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, dtype=np.uint8
    )
    for position, tile in enumerate(tiles):
        top = (position // columns) * (height + gap)
        left = (position % columns) * (width + gap)
        sheet[top : top + height, left : left + width] = tile
    return Image.fromarray(sheet)


def prediction_grid(
    images: np.ndarray, truths: np.ndarray, predictions: np.ndarray, columns: int = 4
) -> Image.Image:
    """Each image beside its error overlay: (N, H, W, 3) images, (N, H, W) masks."""
    tiles = []
    for image, truth, prediction in zip(images, truths, predictions, strict=True):
        tiles.append(np.concatenate([image, error_overlay(image, truth, prediction)], axis=1))
    return tile_grid(tiles, columns)


def dice_histogram(per_image_dice: np.ndarray, pooled_dice: float) -> Figure:
    """The spread of per-image Dice: a pooled figure hides the few images a model fails on."""
    figure = Figure(figsize=(6, 3.5))
    axes = figure.subplots()
    axes.hist(per_image_dice, bins=20, range=(0, 1), color="#3a7")
    axes.set_xlabel("Dice per test image")
    axes.set_ylabel("images")
    axes.set_title(f"pooled test Dice {pooled_dice:.3f}")
    figure.tight_layout()
    return figure
