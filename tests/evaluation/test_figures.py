"""Overlay colours, the labelled picture sheets (their layout, and that their words are really
drawn) and the Dice histogram figure."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from pipeline.evaluation.figures import (
    BLOCK_GAP,
    COLUMNS,
    ERROR_LEGEND,
    FALSE_ALARM,
    GAP,
    GRID_LEGEND,
    HIT,
    MIN_PANEL,
    MISS,
    TITLE_BAND,
    Section,
    captioned_sheet,
    dice_histogram,
    enlarge,
    enlargement,
    error_overlay,
    fit_text,
    label_font,
    legend_height,
    line_height,
    prediction_grid,
    truth_overlay,
    wrap_text,
)
from pipeline.images import TINT_ALPHA as ALPHA


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


def ink(pixels: np.ndarray) -> int:
    """How many pixels of a text band are dark: drawn letters, not paper or a grey band."""
    return int((np.asarray(pixels).max(axis=-1) < 100).sum())


def inked_columns(pixels: np.ndarray) -> np.ndarray:
    return np.flatnonzero((np.asarray(pixels).max(axis=-1) < 100).any(axis=0))


def masks_and_images(count: int, side: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, side, side, 3), dtype=np.uint8)
    truths = rng.integers(0, 2, size=(count, side, side), dtype=np.uint8)
    predictions = rng.integers(0, 2, size=(count, side, side), dtype=np.uint8)
    return images, truths, predictions


@pytest.mark.parametrize("side", [16, 32, 50, 64, 100, 127, 128, 256, 300])
def test_pictures_are_enlarged_by_a_whole_factor_to_at_least_the_minimum(side: int) -> None:
    factor = enlargement(side)
    assert factor * side >= MIN_PANEL >= 100
    assert factor == 1 or (factor - 1) * side < MIN_PANEL  # no larger than needed
    pixels = np.arange(side * 2 * 3, dtype=np.uint8).reshape(side, 2, 3)
    big = enlarge(pixels, factor)
    assert big.shape == (side * factor, 2 * factor, 3)
    np.testing.assert_array_equal(big[::factor, ::factor], pixels)  # nearest neighbour


def test_prediction_grid_lays_out_each_image_as_a_row_of_three_pictures() -> None:
    images, truths, predictions = masks_and_images(8, 16)
    sheet = prediction_grid(images, truths, predictions)
    panel = 128  # 16 px enlarged 8 times
    font = label_font(panel)
    header = line_height(font)
    block = 3 * panel + 2 * GAP
    width = 2 * block + BLOCK_GAP
    legend_top = header + 4 * (panel + GAP)
    assert sheet.size == (width, legend_top + legend_height(GRID_LEGEND, font, width))
    pixels = np.asarray(sheet)
    for position in range(8):
        column_block, row = divmod(position, 4)  # the first four images down the left block
        top = header + row * (panel + GAP)
        left = column_block * (block + BLOCK_GAP)
        expected = (
            images[position],
            truth_overlay(images[position], truths[position]),
            error_overlay(images[position], truths[position], predictions[position]),
        )
        for column, picture in enumerate(expected):
            x = left + column * (panel + GAP)
            np.testing.assert_array_equal(
                pixels[top : top + panel, x : x + panel], enlarge(picture, 8)
            )
    np.testing.assert_array_equal(  # truth: the person green, the rest untouched
        truth_overlay(images[0], truths[0])[truths[0] == 0], images[0][truths[0] == 0]
    )


def test_prediction_grid_headings_are_drawn_over_their_columns() -> None:
    images, truths, predictions = masks_and_images(8, 16)
    sheet = np.asarray(prediction_grid(images, truths, predictions))
    panel = 128
    header = line_height(label_font(panel))
    band = sheet[:header]
    block = 3 * panel + 2 * GAP
    crops = {}
    for column_block in range(2):
        for column in range(3):
            left = column_block * (block + BLOCK_GAP) + column * (panel + GAP)
            crops[column_block, column] = band[:, left : left + panel]
            assert ink(crops[column_block, column]) > 30, COLUMNS[column]
            # Centred in its column.
            used = inked_columns(crops[column_block, column])
            assert abs((used[0] + used[-1]) / 2 - panel / 2) < 6
            assert (band[:, left + panel : left + panel + GAP] == 255).all()  # gaps stay paper
    # Three different words, the same three over each block.
    assert not np.array_equal(crops[0, 0], crops[0, 1])
    assert not np.array_equal(crops[0, 1], crops[0, 2])
    for column in range(3):
        np.testing.assert_array_equal(crops[0, column], crops[1, column])
    widths = [np.ptp(inked_columns(crops[0, column])) for column in range(3)]
    assert widths[2] > max(widths[:2])  # "prediction" is the longest word, and on the right
    # The legend under the pictures is written too.
    assert ink(sheet[header + 4 * (panel + GAP) :]) > 100


def test_prediction_grid_of_one_large_image_is_one_block_at_its_own_size() -> None:
    images, truths, predictions = masks_and_images(1, 200)
    sheet = prediction_grid(images, truths, predictions)
    assert sheet.size[0] == 3 * 200 + 2 * GAP
    header = line_height(label_font(200))
    np.testing.assert_array_equal(np.asarray(sheet)[header : header + 200, :200], images[0])


@pytest.mark.parametrize("counts", [(2, 1, 2), (2, 2, 1), (0, 0, 0)])
def test_prediction_grid_rejects_mismatched_or_no_images(counts) -> None:
    images, masks, predictions = (
        np.zeros((count, 4, 4, 3), dtype=np.uint8)[..., : (3 if i == 0 else 1)].squeeze(-1)
        if i
        else np.zeros((count, 4, 4, 3), dtype=np.uint8)
        for i, count in enumerate(counts)
    )
    with pytest.raises(ValueError):
        prediction_grid(images, masks, predictions)


def two_sections(captions=None) -> list[Section]:
    images, truths, predictions = masks_and_images(8, 16, seed=3)
    captions = captions or [f"Dice 0.{9 - i}00  image{i}" for i in range(8)]
    return [
        Section("best 4 of 9", images[:4], truths[:4], predictions[:4], captions[:4]),
        Section("worst 4 of 9", images[4:], truths[4:], predictions[4:], captions[4:]),
    ]


def sheet_geometry(panel: int = 128, columns: int = 4):
    font = label_font(panel)
    band = line_height(font)
    tile_width = 2 * panel + GAP
    width = columns * (tile_width + GAP) - GAP
    section = band + GAP + panel + band + GAP  # title, one line of tiles, their captions
    return font, band, tile_width, width, section


def test_captioned_sheet_layout() -> None:
    sections = two_sections()
    sheet = captioned_sheet(sections, columns=4)
    font, band, tile_width, width, section = sheet_geometry()
    assert sheet.size == (width, 2 * section + legend_height(ERROR_LEGEND, font, width))
    pixels = np.asarray(sheet)
    for number, part in enumerate(sections):
        top = number * section + band + GAP
        for position in range(4):
            left = position * (tile_width + GAP)
            np.testing.assert_array_equal(
                pixels[top : top + 128, left : left + 128], enlarge(part.images[position], 8)
            )
            overlay = error_overlay(
                part.images[position], part.truths[position], part.predictions[position]
            )
            np.testing.assert_array_equal(
                pixels[top : top + 128, left + 128 + GAP : left + tile_width], enlarge(overlay, 8)
            )


def test_captioned_sheet_titles_and_captions_are_drawn() -> None:
    sheet = np.asarray(captioned_sheet(two_sections(), columns=4))
    _, band, tile_width, _, section = sheet_geometry()
    titles = [sheet[number * section : number * section + band] for number in range(2)]
    for title in titles:
        assert ink(title) > 50
        assert (title[:, -100:] == TITLE_BAND).all()  # on a grey band across the sheet
        assert inked_columns(title)[0] < 20  # written from the left
    assert not np.array_equal(titles[0], titles[1])  # "best ..." and "worst ..."
    for number in range(2):
        caption_top = number * section + band + GAP + 128
        for position in range(4):
            left = position * (tile_width + GAP)
            caption = sheet[caption_top : caption_top + band, left : left + tile_width]
            assert ink(caption) > 50
    assert ink(sheet[2 * section :]) > 100  # the legend


def test_a_captions_dice_changes_that_caption_and_nothing_else() -> None:
    captions = [f"Dice 0.{9 - i}00  image{i}" for i in range(8)]
    changed = list(captions)
    changed[5] = "Dice 0.125  image5"
    before = np.asarray(captioned_sheet(two_sections(captions)))
    after = np.asarray(captioned_sheet(two_sections(changed)))
    _, band, tile_width, _, section = sheet_geometry()
    rows, columns = np.nonzero((before != after).any(axis=-1))
    assert len(rows) > 20
    caption_top = section + band + GAP + 128  # the second section's caption line
    left = 1 * (tile_width + GAP)  # the second tile in it
    assert caption_top <= rows.min() and rows.max() < caption_top + band
    assert left <= columns.min() and columns.max() < left + tile_width


def test_a_long_caption_is_cut_to_its_tile() -> None:
    long = "Dice 0.500  " + "x" * 300
    captions = [long] * 8
    sheet = np.asarray(captioned_sheet(two_sections(captions)))
    _, band, tile_width, _, _ = sheet_geometry()
    caption = sheet[band + GAP + 128 : band + GAP + 128 + band]
    for position in range(3):  # the gaps between the captions stay paper
        gap = (position + 1) * (tile_width + GAP) - GAP
        assert (caption[:, gap : gap + GAP] == 255).all()
    font = label_font(128)
    cut = fit_text(long + "-00123", font, 200)
    assert cut.startswith("Dice 0.500") and cut.endswith("xxxx-00123") and "..." in cut
    assert font.getbbox(cut)[2] - font.getbbox(cut)[0] <= 200
    assert fit_text("short", font, 200) == "short"


def test_wrapped_lines_fit_and_keep_every_word() -> None:
    font = label_font(128)
    lines = wrap_text(GRID_LEGEND, font, 300)
    assert len(lines) > 1
    assert " ".join(lines).split() == GRID_LEGEND.split()
    assert all(font.getbbox(line)[2] - font.getbbox(line)[0] <= 300 for line in lines)


def test_captioned_sheet_rejects_no_images_or_missing_captions() -> None:
    images, truths, predictions = masks_and_images(2, 8)
    with pytest.raises(ValueError, match="at least one image"):
        captioned_sheet([Section("none", images[:0], truths[:0], predictions[:0], [])])
    with pytest.raises(ValueError, match="captions differ"):
        captioned_sheet([Section("one caption", images, truths, predictions, ["a"])])


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
