"""PredictionGrid: which epochs log a grid, and that the grid is the labelled table of the same
validation images (image / truth / prediction headings, pictures at least 128 px a side)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from pipeline.evaluation.figures import (
    COLUMNS,
    GAP,
    MIN_PANEL,
    enlarge,
    error_overlay,
    label_font,
    line_height,
    prediction_grid,
)
from pipeline.training.callbacks import PredictionGrid
from tests.training.caches import SIDE, _easy_pair


class Bright(torch.nn.Module):
    """Calls a pixel a person where it is bright: right on most of the easy pairs' pixels."""

    device = torch.device("cpu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=1, keepdim=True) - 0.45


class Recorder:
    def __init__(self) -> None:
        self.logged: list[tuple[Image.Image, str, int, int]] = []

    def log_image(self, image: Image.Image, key: str, step: int, position: int) -> None:
        self.logged.append((image, key, step, position))


def validation_pairs(count: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    pairs = [_easy_pair(rng, SIDE) for _ in range(count)]
    return np.stack([image for image, _ in pairs]), np.stack([mask for _, mask in pairs])


def run_epochs(
    callback: PredictionGrid, max_epochs: int, sanity: bool = False, first_rank: bool = True
) -> Recorder:
    logger = Recorder()
    module = Bright()
    for epoch in range(max_epochs):
        trainer = SimpleNamespace(
            current_epoch=epoch,
            max_epochs=max_epochs,
            sanity_checking=sanity,
            global_step=10 * (epoch + 1),
            logger=logger,
            is_global_zero=first_rank,
        )
        callback.on_validation_epoch_end(trainer, module)
    return logger


def test_grids_every_few_epochs_and_at_the_last() -> None:
    images, masks = validation_pairs()
    logged = run_epochs(PredictionGrid(images, masks, every=3), max_epochs=8).logged
    assert [(key, step, position) for _, key, step, position in logged] == [
        ("val_predictions", 0, 10),
        ("val_predictions", 3, 40),
        ("val_predictions", 6, 70),
        ("val_predictions", 7, 80),
    ]
    assert run_epochs(PredictionGrid(images, masks, every=1), 3, sanity=True).logged == []
    # Other ranks of a distributed fit spend no time on grids only the first may log.
    assert run_epochs(PredictionGrid(images, masks, every=1), 3, first_rank=False).logged == []


def test_the_grid_is_the_labelled_table_of_the_validation_images() -> None:
    images, masks = validation_pairs()
    ((grid, *_),) = run_epochs(PredictionGrid(images, masks, every=5), max_epochs=1).logged
    predictions = (images.mean(axis=-1) / 255 > 0.45).astype(np.uint8)
    assert (predictions == masks).mean() > 0.9  # the model does predict something sensible
    np.testing.assert_array_equal(
        np.asarray(grid), np.asarray(prediction_grid(images, masks, predictions))
    )

    # Readable at a glance: 16 px pictures enlarged to 128 px, under labelled columns.
    pixels = np.asarray(grid)
    panel = MIN_PANEL
    factor = panel // SIDE
    header = line_height(label_font(panel))
    np.testing.assert_array_equal(
        pixels[header : header + panel, :panel], enlarge(images[0], factor)
    )
    overlay = error_overlay(images[0], masks[0], predictions[0])
    right = 2 * (panel + GAP)
    np.testing.assert_array_equal(
        pixels[header : header + panel, right : right + panel], enlarge(overlay, factor)
    )
    for column in range(len(COLUMNS)):
        left = column * (panel + GAP)
        heading = pixels[:header, left : left + panel]
        assert (heading.max(axis=-1) < 100).sum() > 30, COLUMNS[column]
    assert grid.size[0] >= 6 * panel  # two blocks of three columns
