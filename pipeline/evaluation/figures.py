"""Pictures of predictions that show at a glance where the model is right and wrong.

The picture sheets carry their own words (what each column and row is, each image's Dice, what
the colours mean), so a reader needs neither the code nor the README to read them. The words
are drawn with Pillow's ImageDraw and its built-in font: Pillow is a declared dependency and
that font needs no font file, while matplotlib reaches this project only through mlflow's own
requirements. Pictures are enlarged by a whole factor with nearest-neighbour sampling, so
every pixel the model saw stays a sharp square.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from pipeline.images import PERSON_TINT as HIT  # person found: predict's green too
from pipeline.images import tint

FALSE_ALARM = np.array([230, 40, 40], dtype=np.float32)  # background called person
MISS = np.array([40, 90, 240], dtype=np.float32)  # person missed

# A picture is enlarged to at least this many pixels a side (64 px caches: 2x, 32 px: 4x).
MIN_PANEL = 128
GAP = 4  # between pictures
BLOCK_GAP = 24  # between the side-by-side blocks of the prediction grid
PAD = 4  # around a line of text
PAPER = (255, 255, 255)
INK = (20, 20, 20)
COLUMNS = ("image", "truth", "prediction")
TITLE_BAND = (228, 228, 228)
ERROR_LEGEND = (
    "each pair: the test image, then its overlay: green = person found, red = false alarm, "
    "blue = person missed"
)
GRID_LEGEND = (
    "truth: the person in green. prediction: green = person found, red = false alarm, "
    "blue = person missed"
)


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


def truth_overlay(image: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Tint an (H, W, 3) uint8 image green where the true mask is the person."""
    return tint(image, [(truth.astype(bool), HIT)])


def enlargement(side: int, min_side: int = MIN_PANEL) -> int:
    """The whole factor that brings a picture's shorter `side` to at least `min_side` pixels."""
    return max(1, -(-min_side // max(1, side)))


def enlarge(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Each pixel as a `factor` x `factor` square (nearest neighbour)."""
    if factor == 1:
        return pixels
    return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)


def label_font(panel_side: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at a size that suits pictures `panel_side` pixels high."""
    size = int(np.clip(panel_side // 8, 14, 32))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow 10.0: one bitmap size only
        return ImageFont.load_default()


def line_height(font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    """Height of a band holding one line of text in `font`, padding included."""
    return font.getbbox("Ag|")[3] + 2 * PAD


def _text_width(text: str, font) -> int:
    left, _, right, _ = font.getbbox(text)
    return right - left


def fit_text(text: str, font, width: int) -> str:
    """`text`, its middle cut out for '...' where it is wider than `width` pixels: the start (a
    Dice) and the end (what tells one file name from the next) stay."""
    if _text_width(text, font) <= width:
        return text
    for kept in range(len(text) - 1, 0, -1):
        head, tail = text[: kept - kept // 2], text[len(text) - kept // 2 :]
        shortened = f"{head.rstrip()}...{tail.lstrip()}"
        if _text_width(shortened, font) <= width:
            return shortened
    return "..."


def wrap_text(text: str, font, width: int) -> list[str]:
    """`text` broken at spaces into lines no wider than `width` pixels (a word never split)."""
    lines: list[str] = []
    for word in text.split():
        if lines and _text_width(f"{lines[-1]} {word}", font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _write(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int], text: str, font, centre: bool
) -> None:
    """One line of text in the band starting at (left, top), `width` wide."""
    left, top, width = box
    text = fit_text(text, font, width - 2 * PAD)
    x = left + (width - _text_width(text, font)) // 2 if centre else left + PAD
    draw.text((x, top + PAD), text, fill=INK, font=font)


def legend_height(text: str, font, width: int) -> int:
    """Height of the legend band that holds `text` wrapped to `width` pixels."""
    return len(wrap_text(text, font, width - 2 * PAD)) * (line_height(font) - PAD) + PAD


def _draw_legend(draw: ImageDraw.ImageDraw, top: int, width: int, text: str, font) -> None:
    step = line_height(font) - PAD
    for number, line in enumerate(wrap_text(text, font, width - 2 * PAD)):
        draw.text((PAD, top + PAD + number * step), line, fill=INK, font=font)


def prediction_grid(
    images: np.ndarray,
    truths: np.ndarray,
    predictions: np.ndarray,
    blocks: int = 2,
    min_panel: int = MIN_PANEL,
) -> Image.Image:
    """A table of (N, H, W, 3) images with their (N, H, W) true and predicted masks.

    Each image is one row of three pictures under the headings image / truth / prediction
    (truth: the person tinted green; prediction: the error overlay), the rows split into
    `blocks` side-by-side blocks so eight images fit a screen; a legend under them says what the
    colours mean.
    """
    if not len(images) == len(truths) == len(predictions):
        raise ValueError(
            f"{len(images)} images, {len(truths)} truths and {len(predictions)} predictions"
        )
    if len(images) == 0:
        raise ValueError("prediction_grid needs at least one image")
    factor = enlargement(min(images.shape[1:3]), min_panel)
    height, width = images.shape[1] * factor, images.shape[2] * factor
    blocks = max(1, min(blocks, len(images)))
    rows = -(-len(images) // blocks)
    block_width = len(COLUMNS) * (width + GAP) - GAP
    font = label_font(min(height, width))
    header = line_height(font)
    sheet_width = blocks * (block_width + BLOCK_GAP) - BLOCK_GAP
    body = rows * (height + GAP) - GAP
    legend_top = header + body + GAP
    sheet = Image.new(
        "RGB", (sheet_width, legend_top + legend_height(GRID_LEGEND, font, sheet_width)), PAPER
    )
    draw = ImageDraw.Draw(sheet)
    for block in range(blocks):
        for column, heading in enumerate(COLUMNS):
            left = block * (block_width + BLOCK_GAP) + column * (width + GAP)
            _write(draw, (left, 0, width), heading, font, centre=True)
    for position, (image, truth, prediction) in enumerate(
        zip(images, truths, predictions, strict=True)
    ):
        block, row = divmod(position, rows)
        top = header + row * (height + GAP)
        panels = (image, truth_overlay(image, truth), error_overlay(image, truth, prediction))
        for column, panel in enumerate(panels):
            left = block * (block_width + BLOCK_GAP) + column * (width + GAP)
            sheet.paste(Image.fromarray(enlarge(panel, factor)), (left, top))
    _draw_legend(draw, legend_top, sheet_width, GRID_LEGEND, font)
    return sheet


@dataclass
class Section:
    """Rows of a captioned sheet under one title: each tile an image beside its error overlay."""

    title: str
    images: np.ndarray  # (N, H, W, 3) uint8
    truths: np.ndarray  # (N, H, W)
    predictions: np.ndarray  # (N, H, W)
    captions: Sequence[str]


def captioned_sheet(
    sections: list[Section], columns: int = 4, min_panel: int = MIN_PANEL
) -> Image.Image:
    """Titled sections of tiles (an image, a gap, its error overlay), each tile captioned below,
    `columns` tiles a line, and the colours' legend at the bottom. A section's title sits on a
    grey band across the sheet."""
    sections = [section for section in sections if len(section.images)]
    if not sections:
        raise ValueError("captioned_sheet needs at least one image")
    for section in sections:
        if not (
            len(section.images)
            == len(section.truths)
            == len(section.predictions)
            == len(section.captions)
        ):
            raise ValueError(f"section {section.title!r}: images, masks and captions differ")
    shape = sections[0].images.shape[1:3]
    factor = enlargement(min(shape), min_panel)
    height, width = shape[0] * factor, shape[1] * factor
    tile_width = 2 * width + GAP
    columns = max(1, min(columns, max(len(section.images) for section in sections)))
    font = label_font(min(height, width))
    band = line_height(font)
    sheet_width = columns * (tile_width + GAP) - GAP
    line = height + band + GAP  # a line of tiles with their captions
    tops = []
    top = 0
    for section in sections:
        tops.append(top)
        top += band + GAP + -(-len(section.images) // columns) * line
    legend_top = top
    sheet = Image.new(
        "RGB", (sheet_width, legend_top + legend_height(ERROR_LEGEND, font, sheet_width)), PAPER
    )
    draw = ImageDraw.Draw(sheet)
    for section, section_top in zip(sections, tops, strict=True):
        draw.rectangle((0, section_top, sheet_width - 1, section_top + band - 1), fill=TITLE_BAND)
        _write(draw, (0, section_top, sheet_width), section.title, font, centre=False)
        for position, (image, truth, prediction, caption) in enumerate(
            zip(section.images, section.truths, section.predictions, section.captions, strict=True)
        ):
            row, column = divmod(position, columns)
            left = column * (tile_width + GAP)
            tile_top = section_top + band + GAP + row * line
            sheet.paste(Image.fromarray(enlarge(image, factor)), (left, tile_top))
            overlay = enlarge(error_overlay(image, truth, prediction), factor)
            sheet.paste(Image.fromarray(overlay), (left + width + GAP, tile_top))
            _write(draw, (left, tile_top + height, tile_width), caption, font, centre=True)
    _draw_legend(draw, legend_top, sheet_width, ERROR_LEGEND, font)
    return sheet


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
