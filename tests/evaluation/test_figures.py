"""Overlay colours, grid arithmetic and the Dice histogram figure."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from pipeline.evaluation.figures import (
    FALSE_ALARM,
    HIT,
    MISS,
    dice_histogram,
    error_overlay,
    prediction_grid,
    tile_grid,
)
from pipeline.serving.images import TINT_ALPHA as ALPHA


def _tinted(pixel: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return ((1 - ALPHA) * pixel.astype(np.float32) + ALPHA * colour).round().astype(np.uint8)


@pytest.fixture
def quadrants() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2x2 image whose pixels are hit, false alarm, miss and true negative, in that order."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(2, 2, 3), dtype=np.uint8)
    truth = np.array([[1, 0], [1, 0]], dtype=np.uint8)
    prediction = np.array([[1, 1], [0, 0]], dtype=np.uint8)
    return image, truth, prediction


def test_error_overlay_colours_each_outcome(quadrants) -> None:
    image, truth, prediction = quadrants
    overlay = error_overlay(image, truth, prediction)
    assert overlay.shape == image.shape
    assert overlay.dtype == np.uint8
    np.testing.assert_array_equal(overlay[0, 0], _tinted(image[0, 0], HIT))
    np.testing.assert_array_equal(overlay[0, 1], _tinted(image[0, 1], FALSE_ALARM))
    np.testing.assert_array_equal(overlay[1, 0], _tinted(image[1, 0], MISS))
    np.testing.assert_array_equal(overlay[1, 1], image[1, 1])  # true negative untouched


def test_error_overlay_outcomes_are_distinguishable() -> None:
    grey = np.full((2, 2, 3), 128, dtype=np.uint8)
    truth = np.array([[1, 0], [1, 0]])
    prediction = np.array([[True, True], [False, False]])  # bool works as well as 0/1
    overlay = error_overlay(grey, truth, prediction)
    colours = {tuple(overlay[0, 0]), tuple(overlay[0, 1]), tuple(overlay[1, 0])}
    assert len(colours) == 3
    assert tuple(overlay[1, 1]) == (128, 128, 128)
    assert tuple(grey[0, 0]) == (128, 128, 128)  # the input is not modified in place
    # The dominant channel names the outcome: green hit, red false alarm, blue miss.
    assert int(np.argmax(overlay[0, 0])) == 1
    assert int(np.argmax(overlay[0, 1])) == 0
    assert int(np.argmax(overlay[1, 0])) == 2


def test_error_overlay_leaves_a_perfect_empty_prediction_alone() -> None:
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    empty = np.zeros((4, 5), dtype=np.uint8)
    np.testing.assert_array_equal(error_overlay(image, empty, empty), image)


@pytest.mark.parametrize(
    ("count", "columns", "rows", "used_columns"),
    [(5, 2, 3, 2), (4, 2, 2, 2), (1, 4, 1, 1), (3, 10, 1, 3), (3, 0, 3, 1)],
)
def test_tile_grid_size(count: int, columns: int, rows: int, used_columns: int) -> None:
    height, width, gap = 3, 4, 2
    tiles = [np.full((height, width, 3), i, dtype=np.uint8) for i in range(count)]
    sheet = tile_grid(tiles, columns, gap=gap)
    assert isinstance(sheet, Image.Image)
    assert sheet.size == (
        used_columns * (width + gap) - gap,
        rows * (height + gap) - gap,
    )


def test_tile_grid_places_tiles_row_by_row_on_white() -> None:
    tiles = [np.full((3, 4, 3), 10 * (i + 1), dtype=np.uint8) for i in range(3)]
    sheet = np.asarray(tile_grid(tiles, columns=2, gap=1))
    assert sheet.shape == (7, 9, 3)
    assert (sheet[0:3, 0:4] == 10).all()
    assert (sheet[0:3, 5:9] == 20).all()
    assert (sheet[4:7, 0:4] == 30).all()
    assert (sheet[3, :] == 255).all()  # gap row
    assert (sheet[:, 4] == 255).all()  # gap column
    assert (sheet[4:7, 5:9] == 255).all()  # unused last cell stays white


def test_tile_grid_without_tiles_raises() -> None:
    with pytest.raises(ValueError, match="at least one tile"):
        tile_grid([], columns=3)


def test_prediction_grid_size_and_content() -> None:
    count, height, width = 3, 5, 6
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)
    truths = rng.integers(0, 2, size=(count, height, width), dtype=np.uint8)
    predictions = rng.integers(0, 2, size=(count, height, width), dtype=np.uint8)
    sheet = prediction_grid(images, truths, predictions, columns=2)
    gap = 2
    tile_width = 2 * width  # image beside its overlay
    assert sheet.size == (2 * (tile_width + gap) - gap, 2 * (height + gap) - gap)
    pixels = np.asarray(sheet)
    np.testing.assert_array_equal(pixels[:height, :width], images[0])
    np.testing.assert_array_equal(
        pixels[:height, width:tile_width], error_overlay(images[0], truths[0], predictions[0])
    )
    second_row = height + gap
    np.testing.assert_array_equal(pixels[second_row : second_row + height, :width], images[2])


def test_prediction_grid_rejects_mismatched_lengths() -> None:
    images = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    masks = np.zeros((1, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError):
        prediction_grid(images, masks, masks)


def test_dice_histogram_is_a_figure_that_saves_as_png() -> None:
    values = np.array([0.1, 0.5, 0.52, 0.9, 0.95, 1.0])
    figure = dice_histogram(values, pooled_dice=0.8123)
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    assert axes.get_title() == "pooled test Dice 0.812"
    assert sum(patch.get_height() for patch in axes.patches) == len(values)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=50)
    assert buffer.getvalue().startswith(b"\x89PNG\r\n\x1a\n")
    buffer.seek(0)
    with Image.open(buffer) as picture:
        assert picture.format == "PNG"
        assert picture.size == (300, 175)  # 6 x 3.5 inches at 50 dpi
