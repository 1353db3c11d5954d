"""Synthetic stand-in for the Kaggle "Supervisely Filtered Segmentation Person Dataset".

Tests and smoke runs need data that crosses the same edges as the real download (df.csv with an
unnamed index column, mixed PNG modes, EXIF-rotated images, masks at another size or with soft
edges) and that a model cannot segment by colour alone, without fetching gigabytes.

The pictures imitate the main ways real photos of people differ from drawings: a defocused
background behind sharp people, light from one side that shades people and casts their shadows
on the ground, colour casts and dim light, camera shake and JPEG compression.
"""

from __future__ import annotations

import colorsys
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import ExifTags, Image, ImageChops, ImageDraw, ImageFilter

# Part of a synthetic source's fingerprint: raise it whenever the pictures change, so that a
# folder landed by an earlier generator is generated again rather than reused.
GENERATOR_VERSION = 2
NAME_PATTERN = "ds_synth_pexels-{index:05d}"
SIZE_RANGE = (160, 640)
MIN_FOREGROUND = 0.015  # above the promised 1%, so soft edges and rescaling cannot undercut it
PNG_EFFORT = 1  # zlib level: noisy photos shrink only ~10% more at level 6, for 3x the time

# Rare properties are dealt out per block of images rather than drawn per image, so every block
# carries the full mix and a block's content never depends on how many images were asked for.
BLOCK = 20
MODES_PER_BLOCK = {"RGB": 12, "RGBA": 3, "L": 2, "P": 3}
EXIF_PER_BLOCK = 2
RESCALED_MASKS_PER_BLOCK = 2
SOFT_MASKS_PER_BLOCK = 1
MASK_SCALES = (0.5, 1.5)

# How to store an upright picture so that PIL.ImageOps.exif_transpose turns it back upright.
STORE_TRANSPOSE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}

SKIN, HAIR, TOP, BOTTOM = range(4)
PARTS = 4

# The look of a photo, drawn per image. Shots are framed like the real set's photos.
SHOTS = {"portrait": 0.35, "full": 0.45, "small": 0.2}
DEFOCUS_CHANCE = {"portrait": 0.7, "full": 0.45, "small": 0.1}  # shallow depth of field
DEFOCUS_RADIUS = (0.015, 0.04)  # background blur, as a share of the shorter side
SHADOW_CHANCE = 0.45  # shots of whole bodies (not portraits) whose people cast a shadow
LOW_LIGHT_CHANCE = 0.12
JPEG_CHANCE, JPEG_QUALITY = 0.3, (50, 90)
SHAKE_CHANCE = 0.12  # mild motion blur

RGB = tuple[int, int, int]
Point = tuple[float, float]


@dataclass(frozen=True)
class _Plan:
    """How one image is stored: the edges a consumer of the real dataset has to handle."""

    mode: str
    orientation: int | None
    mask_scale: float | None
    soft_mask: bool


@dataclass(frozen=True)
class _Figure:
    """Where a person stands: `height` spans head top to feet, in pixels."""

    cx: float
    top: float
    height: float


@dataclass(frozen=True)
class _Light:
    """Where the main light comes from: `side` -1 from the left, +1 from the right; `strength`
    is how much brighter the lit side of a person is than its middle."""

    side: int
    strength: float


def generate_dataset(root: Path, count: int, seed: int = 0) -> Path:
    """Write `count` image/mask pairs in the real dataset's layout under `root`;
    return the df.csv path."""
    root = Path(root)
    for folder in ("images", "masks", "collage"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rows = [_write_pair(root, index, seed) for index in range(count)]
    index_path = root / "df.csv"
    pd.DataFrame(rows, columns=["images", "masks", "collages"]).to_csv(index_path)
    return index_path


def _write_pair(root: Path, index: int, seed: int) -> tuple[str, str, str]:
    """Render, store and describe one pair; only this pair is ever held in memory."""
    plan = _plan(seed, index)
    rng = np.random.default_rng([seed, index, 1])
    width, height = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, size=2))
    picture, mask = _render(rng, width, height)
    stored = _convert(picture, plan.mode, rng)
    name = NAME_PATTERN.format(index=index)
    image_rel, mask_rel, collage_rel = (
        f"images/{name}.png",
        f"masks/{name}.png",
        f"collage/{name}.jpg",
    )
    _save_image(stored, root / image_rel, plan.orientation)
    _collage(stored.convert("RGB"), mask).save(root / collage_rel, quality=95, subsampling=0)
    _stored_mask(mask, plan).save(root / mask_rel)
    return image_rel, mask_rel, collage_rel


def _plan(seed: int, index: int) -> _Plan:
    """Deal the storage quirks of the image's block and pick this image's share."""
    block, slot = divmod(index, BLOCK)
    rng = np.random.default_rng([seed, block, 0])
    modes = rng.permutation(np.repeat(list(MODES_PER_BLOCK), list(MODES_PER_BLOCK.values())))
    rotated = rng.permutation(BLOCK)[:EXIF_PER_BLOCK]
    rescaled = rng.permutation(BLOCK)[:RESCALED_MASKS_PER_BLOCK]
    soft = rng.permutation(BLOCK)[:SOFT_MASKS_PER_BLOCK]
    orientations = rng.choice(list(STORE_TRANSPOSE), size=BLOCK)
    scales = rng.choice(MASK_SCALES, size=BLOCK)
    return _Plan(
        mode=str(modes[slot]),
        orientation=int(orientations[slot]) if slot in rotated else None,
        mask_scale=float(scales[slot]) if slot in rescaled else None,
        soft_mask=bool(slot in soft),
    )


def _render(rng: np.random.Generator, width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """An upright RGB picture of people in a cluttered scene and its binary person mask.

    The scene is finished first (shadows, then depth-of-field blur) and the people are painted
    on it, so they stay sharp in front of a defocused background.
    """
    shot = str(rng.choice(list(SHOTS), p=list(SHOTS.values())))
    light = _Light(side=int(rng.choice([-1, 1])), strength=float(rng.uniform(0.08, 0.3)))
    pixels = _background(rng, width, height)
    clutter, clutter_colours = _draw_clutter(rng, width, height)
    pixels = _paint(rng, pixels, clutter, clutter_colours, np.ones(len(clutter_colours), bool))
    labels, palette, figures = _draw_people(rng, width, height, shot)
    if shot != "portrait" and rng.random() < SHADOW_CHANCE:
        pixels = _cast_shadows(rng, pixels, labels, figures, light)
    if rng.random() < DEFOCUS_CHANCE[shot]:
        pixels = _defocus(rng, pixels)
    canvas = Image.fromarray(
        _paint(rng, pixels, labels, palette, _is_clothing(len(palette)), (figures, light))
    )
    mask = Image.fromarray(np.where(labels > 0, 255, 0).astype(np.uint8))
    _occlude(rng, canvas, mask)
    return _degrade(rng, canvas, light), mask


def _value_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """Smooth noise around [0, 1] with about `cells` features across; upscaling keeps it cheap."""
    longest = max(width, height)
    grid_h = max(2, round(cells * height / longest) + 1)
    grid_w = max(2, round(cells * width / longest) + 1)
    grid = Image.fromarray(rng.random((grid_h, grid_w), dtype=np.float32))
    return np.asarray(grid.resize((width, height), Image.Resampling.BICUBIC))


def _fractal_noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Value noise over several scales in about [-1, 1], so textures have no single grain.

    The octaves are summed at half resolution and upscaled once, which halves the cost.
    """
    small = ((width + 1) // 2, (height + 1) // 2)
    octaves = [(2**k, 0.6**k) for k in range(1, 7)]
    total = sum(weight for _, weight in octaves)
    noise = sum(weight * _value_noise(rng, *small, cells) for cells, weight in octaves) / total
    spread = 2.5 * (noise - 0.5)  # the sum of octaves hugs its mean; this makes it span ~[-1, 1]
    return np.asarray(Image.fromarray(spread).resize((width, height), Image.Resampling.BICUBIC))


def _stripes(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A field of +-1 stripes, or a checkerboard of tiles, at a random angle and period."""
    angle = rng.uniform(0, np.pi)
    band = rng.uniform(3, 20)
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    bands = np.floor((xs * np.cos(angle) + ys * np.sin(angle)) / band)
    if rng.random() < 0.5:
        bands = bands + np.floor((ys * np.cos(angle) - xs * np.sin(angle)) / band)
    return (1 - 2 * (bands.astype(np.int32) & 1)).astype(np.float32)


def _skin_colour(rng: np.random.Generator) -> np.ndarray:
    """A skin tone between pale and dark brown."""
    light, dark = np.array([250.0, 214.0, 186.0]), np.array([68.0, 44.0, 30.0])
    return np.clip(light + (dark - light) * rng.random() + rng.normal(0, 10, 3), 0, 255)


def _hair_colour(rng: np.random.Generator) -> np.ndarray:
    """Mostly natural hair colours, sometimes a dyed one."""
    natural = np.array(
        [[22, 16, 12], [85, 55, 32], [196, 166, 108], [150, 150, 150], [135, 58, 28]]
    )
    if rng.random() < 0.15:
        return _cloth_colour(rng)
    return np.clip(natural[rng.integers(len(natural))] + rng.normal(0, 12, 3), 0, 255)


def _cloth_colour(rng: np.random.Generator) -> np.ndarray:
    """Any hue, saturation and value: clothes span the whole colour space."""
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.random() ** 0.8, rng.uniform(0.08, 1.0))
    return 255 * np.array(rgb)


def _scene_colour(rng: np.random.Generator) -> np.ndarray:
    """Background colours drawn like people's colours, so colour alone cannot segment."""
    pick = rng.random()
    if pick < 0.2:
        return _skin_colour(rng)
    if pick < 0.3:
        return _hair_colour(rng)
    return _cloth_colour(rng)


def _as_fill(colour: np.ndarray) -> RGB:
    """An ImageDraw fill from a float colour."""
    red, green, blue = (int(v) for v in np.clip(colour, 0, 255))
    return red, green, blue


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A gradient with blotches, multi-scale texture and sometimes a stripe or tile region.

    The smooth part is made at half resolution and upscaled, which quarters its cost.
    """
    small_w, small_h = (width + 1) // 2, (height + 1) // 2
    xs = np.linspace(0, 1, small_w, dtype=np.float32)[None, :]
    ys = np.linspace(0, 1, small_h, dtype=np.float32)[:, None]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.clip(0.5 + (xs - 0.5) * np.cos(angle) + (ys - 0.5) * np.sin(angle), 0, 1)
    start, end, blotch = (_scene_colour(rng).astype(np.float32) for _ in range(3))
    smooth = start + (end - start) * ramp[..., None]
    blotches = _value_noise(rng, small_w, small_h, int(rng.integers(2, 6)))
    smooth += (blotch - smooth) * np.clip(blotches * 2.5 - 1.0, 0, 1)[..., None]
    smooth *= 1 + rng.uniform(0.2, 0.6) * _fractal_noise(rng, small_w, small_h)[..., None]
    upscaled = Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    base = np.array(upscaled)
    if rng.random() < 0.5:
        region = _random_region(rng, width, height)
        pattern = 1 + rng.uniform(0.1, 0.35) * _stripes(rng, width, height)[region]
        base[region] = np.clip(base[region] * pattern[..., None], 0, 255)
    return base


def _random_region(rng: np.random.Generator, width: int, height: int) -> tuple[slice, slice]:
    """Rows and columns of a rectangle covering part of the frame, e.g. a wall or a floor."""
    x0, x1 = sorted(int(v) for v in rng.integers(0, width, size=2))
    y0, y1 = sorted(int(v) for v in rng.integers(0, height, size=2))
    return slice(y0, max(y1, y0 + height // 4)), slice(x0, max(x1, x0 + width // 4))


def _random_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float) -> list[Point]:
    """A star-shaped polygon, irregular like the outline of everyday objects."""
    corners = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, corners))
    radii = radius * rng.uniform(0.4, 1.0, corners)
    return [
        (float(cx + r * np.cos(a)), float(cy + r * np.sin(a)))
        for a, r in zip(angles, radii, strict=True)
    ]


def _draw_clutter(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Background objects as a label map and label colours, including skin- and cloth-coloured,
    limb-like distractors that a model must learn to leave out of the mask."""
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    colours = [np.zeros(3)]
    side = min(width, height)
    for label in range(1, int(rng.integers(4, 18)) + 1):
        cx, cy = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
        size = side * rng.uniform(0.04, 0.4)
        box = (cx - size, cy - size * rng.uniform(0.3, 1.5), cx + size, cy + size)
        kind = rng.integers(5)
        colours.append(_skin_colour(rng) if kind == 4 else _scene_colour(rng))
        if kind == 0:
            draw.rectangle(box, fill=label)
        elif kind == 1:
            draw.ellipse(box, fill=label)
        elif kind == 2:
            draw.polygon(_random_polygon(rng, cx, cy, size), fill=label)
        else:
            end = (cx + rng.uniform(-2, 2) * size, cy + rng.uniform(-2, 2) * size)
            thickness = max(2, int(size * rng.uniform(0.1, 0.4)))
            draw.line([(cx, cy), end], fill=label, width=thickness)
    return np.asarray(layer), np.array(colours, dtype=np.float32)


def _draw_people(
    rng: np.random.Generator, width: int, height: int, shot: str
) -> tuple[np.ndarray, np.ndarray, list[_Figure]]:
    """A label map (0 = background, then PARTS labels per person), the colour of each label and
    the people's figures in label order."""
    layer = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(layer)
    colours = [np.zeros(3)]
    figures = sorted(_figures(rng, width, height, shot), key=lambda figure: figure.height)
    for figure in figures:
        _draw_person(draw, rng, figure, first_label=len(colours))
        colours.extend(_person_colours(rng))
    labels = np.asarray(layer)
    while np.count_nonzero(labels) < MIN_FOREGROUND * labels.size:
        centre, size = width * rng.uniform(0.3, 0.7), height * rng.uniform(0.8, 1.3)
        rescue = _Figure(centre, height * 0.05, size)
        _draw_person(draw, rng, rescue, first_label=len(colours))
        colours.extend(_person_colours(rng))
        figures.append(rescue)
        labels = np.asarray(layer)
    return labels, np.array(colours, dtype=np.float32), figures


def _figures(rng: np.random.Generator, width: int, height: int, shot: str) -> list[_Figure]:
    """Framing like photos of people: close portraits, full bodies, or small people far away."""
    if shot == "portrait":
        count = 1 if rng.random() < 0.75 else 2
        return [
            _Figure(
                width * rng.uniform(0.25, 0.75),
                height * rng.uniform(-0.02, 0.2),
                height * rng.uniform(1.3, 2.4),
            )
            for _ in range(count)
        ]
    low, high = (0.5, 1.0) if shot == "full" else (0.15, 0.4)
    figures = []
    for _ in range(int(rng.integers(1, 4))):
        scale = rng.uniform(low, high)
        figures.append(
            _Figure(
                width * rng.uniform(-0.05, 1.05),
                height * rng.uniform(-0.05, 1.1 - scale),
                height * scale,
            )
        )
    return figures


def _person_colours(rng: np.random.Generator) -> list[np.ndarray]:
    """Skin, hair, top and bottom colours for one person, in label order."""
    return [_skin_colour(rng), _hair_colour(rng), _cloth_colour(rng), _cloth_colour(rng)]


def _limb_end(start: Point, length: float, angle: float, side: int) -> Point:
    """The far end of a limb hanging `angle` radians away from straight down, to `side`."""
    return start[0] + side * length * np.sin(angle), start[1] + length * np.cos(angle)


def _draw_person(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, figure: _Figure, first_label: int
) -> None:
    """A posed stick-and-blob person in body units (head top 0, feet about 1) drawn as labels."""
    skin, hair, top, bottom = (first_label + part for part in (SKIN, HAIR, TOP, BOTTOM))
    build = rng.uniform(0.8, 1.3)
    lean = rng.uniform(-0.25, 0.25)
    scale = figure.height

    def pixel(point: Point) -> Point:
        dx, dy = point[0], point[1] - 0.5
        x = dx * np.cos(lean) - dy * np.sin(lean)
        y = dx * np.sin(lean) + dy * np.cos(lean) + 0.5
        return float(figure.cx + scale * x), float(figure.top + scale * y)

    def limb(points: list[Point], thickness: float, label: int) -> None:
        width = max(1, round(thickness * scale))
        draw.line([pixel(p) for p in points], fill=label, width=width, joint="curve")
        for point in (points[0], points[-1]):
            disc(point, thickness / 2, label)

    def disc(point: Point, radius: float, label: int) -> None:
        x, y = pixel(point)
        r = radius * scale
        draw.ellipse((x - r, y - r, x + r, y + r), fill=label)

    shoulders = [(-0.105 * build, 0.2), (0.105 * build, 0.2)]
    hips = [(-0.05 * build, 0.55), (0.05 * build, 0.55)]
    legwear = rng.choice(["trousers", "shorts", "skirt"])
    for hip, side in zip(hips, (-1, 1), strict=True):
        knee = _limb_end(hip, 0.23, rng.uniform(-0.1, 0.45), side)
        ankle = _limb_end(knee, 0.22, rng.uniform(-0.5, 0.3), side)
        limb([hip, knee], 0.075 * build, skin if legwear == "skirt" else bottom)
        limb([knee, ankle], 0.06 * build, bottom if legwear == "trousers" else skin)
        limb([ankle, (ankle[0] + side * 0.04, ankle[1] + 0.015)], 0.035, bottom)
    pelvis_depth = 0.72 if legwear == "skirt" else 0.6
    pelvis_width = 0.16 if legwear == "skirt" else 0.1
    pelvis = [(-0.085 * build, 0.47), (0.085 * build, 0.47)]
    pelvis += [(pelvis_width * build, pelvis_depth), (-pelvis_width * build, pelvis_depth)]
    draw.polygon([pixel(p) for p in pelvis], fill=bottom)
    torso = [shoulders[0], shoulders[1], (0.085 * build, 0.52), (-0.085 * build, 0.52)]
    draw.polygon([pixel(p) for p in torso], fill=top)
    hairstyle = rng.choice(["none", "short", "long"], p=[0.15, 0.45, 0.4])
    if hairstyle == "long":
        veil = [(-0.045, 0.03), (0.045, 0.03), (0.085, 0.26), (-0.085, 0.26)]
        draw.polygon([pixel(p) for p in veil], fill=hair)
    limb([(0.0, 0.13), (0.0, 0.2)], 0.05 * build, skin)
    head_x, head_y = pixel((0.0, 0.075))
    half_width, half_height = 0.056 * scale, 0.07 * scale
    draw.ellipse(
        (head_x - half_width, head_y - half_height, head_x + half_width, head_y + half_height),
        fill=skin,
    )
    if hairstyle != "none":
        half_width, half_height = 1.1 * half_width, 1.08 * half_height
        box = (head_x - half_width, head_y - half_height, head_x + half_width, head_y + half_height)
        draw.chord(box, 165, 375, fill=hair)
    long_sleeves = rng.random() < 0.5
    for shoulder, side in zip(shoulders, (-1, 1), strict=True):
        disc(shoulder, 0.03 * build, top)
        elbow = _limb_end(shoulder, 0.16, rng.uniform(0.05, 2.6), side)
        wrist = _limb_end(elbow, 0.15, rng.uniform(-0.3, 2.4), side)
        limb([shoulder, elbow], 0.05 * build, top)
        limb([elbow, wrist], 0.042 * build, top if long_sleeves else skin)
        disc(wrist, 0.027, skin)


def _is_clothing(labels: int) -> np.ndarray:
    """Which person labels are tops or bottoms, the parts that may be striped."""
    label_ids = np.arange(labels)
    return (label_ids > 0) & ((label_ids - 1) % PARTS >= TOP)


def _paint(
    rng: np.random.Generator,
    pixels: np.ndarray,
    labels: np.ndarray,
    palette: np.ndarray,
    may_stripe: np.ndarray,
    people: tuple[list[_Figure], _Light] | None = None,
) -> np.ndarray:
    """Fill each nonzero label with its colour, shaded by texture, striped on some labels.

    Labels that are people (`people`: their figures in label order, and the light) are lit from
    the light's side, darker towards their outline as round bodies are, and their outermost
    pixels are blended with the scene behind instead of cut out in steps.
    """
    if not labels.any():
        return pixels
    rows, columns = np.nonzero(labels)
    box = slice(rows.min(), rows.max() + 1), slice(columns.min(), columns.max() + 1)
    labels = labels[box]
    height, width = labels.shape
    striped = may_stripe & (rng.random(len(palette)) < 0.3)
    grain = rng.uniform(0.15, 0.5, len(palette)).astype(np.float32)
    stripe_strength = np.where(striped, rng.uniform(0.15, 0.4, len(palette)), 0).astype(np.float32)
    shade = 1 + grain[labels] * _fractal_noise(rng, width, height)
    if striped.any():
        shade += stripe_strength[labels] * _stripes(rng, width, height)
    inside = labels > 0
    if people is not None:
        shade *= _person_light(labels, inside, int(columns.min()), *people)
    filled = np.clip(palette[labels] * shade[..., None], 0, 255).astype(np.uint8)
    painted = pixels.copy()
    painted[box] = np.where(inside[..., None], filled, pixels[box])
    if people is not None:
        _soften_outline(painted[box], pixels[box], inside)
    return painted


def _person_light(
    labels: np.ndarray, inside: np.ndarray, left: int, figures: list[_Figure], light: _Light
) -> np.ndarray:
    """Shading of each person: brighter on the light's side, darker towards the outline.

    `labels` is a crop whose first column is image column `left`.
    """
    centre = np.zeros(1 + PARTS * len(figures), np.float32)
    inverse_half_width = np.zeros_like(centre)
    for index, figure in enumerate(figures):
        parts = slice(1 + PARTS * index, 1 + PARTS * (index + 1))
        centre[parts] = figure.cx - left
        inverse_half_width[parts] = 1 / max(1.0, 0.16 * figure.height)
    across = np.arange(labels.shape[1], dtype=np.float32)[None, :] - centre[labels]
    across *= inverse_half_width[labels]
    np.clip(across, -1, 1, out=across)
    shading = 1 + (light.side * light.strength) * across
    height, width = labels.shape
    typical = float(np.median([figure.height for figure in figures]))
    radius = float(np.clip(0.012 * typical, 0.5, 10))
    body = Image.fromarray(inside.view(np.uint8) * np.uint8(255))
    small = body.resize((max(1, width // 2), max(1, height // 2)), Image.Resampling.BOX)
    depth = small.filter(ImageFilter.GaussianBlur(radius / 2)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    shading *= 0.7 + (0.3 / 255) * np.asarray(depth, dtype=np.float32)
    return shading


def _soften_outline(painted: np.ndarray, behind: np.ndarray, inside: np.ndarray) -> None:
    """Blend the outermost person pixels of `painted` with the scene `behind`, in place, as a
    camera's pixels straddle an outline; the mask keeps its hard edge."""
    coverage = np.asarray(
        Image.fromarray(inside.view(np.uint8) * np.uint8(255)).filter(ImageFilter.SMOOTH)
    )
    edge = inside & (coverage < 255)
    alpha = (coverage[edge].astype(np.float32) / 255)[:, None]
    painted[edge] = (painted[edge] * alpha + behind[edge] * (1 - alpha)).astype(np.uint8)


def _cast_shadows(
    rng: np.random.Generator,
    pixels: np.ndarray,
    labels: np.ndarray,
    figures: list[_Figure],
    light: _Light,
) -> np.ndarray:
    """Darken the ground where people whose feet are in view cast a soft shadow, away from the
    light and receding behind them; made at a quarter (small pictures: half) of the size,
    where blur is cheap."""
    height, width = labels.shape
    factor = 4 if min(width, height) >= 256 else 2
    size = (max(1, width // factor), max(1, height // factor))
    small_labels = Image.fromarray(labels).resize(size, Image.Resampling.NEAREST)
    shadows = Image.new("L", size, 0)
    for index, figure in enumerate(figures):
        table = [0] * 256
        for label in range(1 + PARTS * index, 1 + PARTS * (index + 1)):
            table[label] = 255
        silhouette = small_labels.point(table)
        box = silhouette.getbbox()
        if box is None or box[3] >= size[1] - 1:
            continue  # not in view, or the feet are cut off by the frame: no ground shows
        feet = box[3]
        squash = rng.uniform(0.2, 0.5)  # a shadow's length on the receding ground
        shear = -light.side * rng.uniform(0.3, 1.0)  # sideways, away from the light
        coefficients = (1, shear / squash, -shear * feet / squash, 0, 1 / squash,
                        feet * (1 - 1 / squash))  # fmt: skip
        cast = silhouette.transform(
            size, Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR
        )
        blur = max(0.7, 0.03 * figure.height / factor)
        shadows = ImageChops.lighter(shadows, cast.filter(ImageFilter.GaussianBlur(blur)))
    box = shadows.getbbox()
    if box is None:
        return pixels
    shadows = shadows.point([min(255, 2 * value) for value in range(256)])  # a solid core
    darkness = rng.uniform(0.35, 0.6) / 255
    full = shadows.resize((width, height), Image.Resampling.BILINEAR)
    region = slice(box[1] * factor, box[3] * factor), slice(box[0] * factor, box[2] * factor)
    shade = 1 - darkness * np.asarray(full, dtype=np.float32)[region]
    shaded = pixels.copy()
    shaded[region] = (pixels[region] * shade[..., None]).astype(np.uint8)
    return shaded


def _defocus(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """The scene out of focus, as behind a sharp person at a wide aperture; blurred at a
    fraction of the size and scaled back, which costs little however strong the blur."""
    height, width = pixels.shape[:2]
    radius = min(width, height) * rng.uniform(*DEFOCUS_RADIUS)
    factor = max(1, int(radius // 2))
    small = Image.fromarray(pixels).reduce(factor)
    blurred = small.filter(ImageFilter.GaussianBlur(radius / factor))
    return np.asarray(blurred.resize((width, height), Image.Resampling.BICUBIC))


def _occlude(rng: np.random.Generator, canvas: Image.Image, mask: Image.Image) -> None:
    """Sometimes put an object in front of the people, cutting the mask, unless it hides them."""
    if rng.random() >= 0.2:
        return
    width, height = canvas.size
    cover = Image.new("L", canvas.size, 0)
    if rng.random() < 0.5:
        left_top, right_top = height * rng.uniform(0.6, 0.9, 2)
        shape = [(0, left_top), (width, right_top), (width, height), (0, height)]
    else:
        left, thick, slant = width * rng.uniform(0, 1, 3) * np.array([1, 0.1, 0.1])
        right = left + thick
        shape = [(left, 0), (right, 0), (right + slant, height), (left + slant, height)]
    ImageDraw.Draw(cover).polygon(shape, fill=255)
    kept = np.asarray(mask) > 0
    kept &= np.asarray(cover) == 0
    if np.count_nonzero(kept) < MIN_FOREGROUND * kept.size:
        return
    ImageDraw.Draw(canvas).polygon(shape, fill=_as_fill(_scene_colour(rng)))
    mask.paste(0, mask=cover)


def _degrade(rng: np.random.Generator, canvas: Image.Image, light: _Light) -> Image.Image:
    """What a camera adds: uneven light brighter on the light's side, a colour cast, sometimes
    dim light, lens blur, sometimes shake, sensor noise and sometimes JPEG compression."""
    width, height = canvas.size
    noise = rng.uniform(1.5, 6)
    gains = _white_balance(rng)
    if rng.random() < LOW_LIGHT_CHANCE:
        gains *= rng.uniform(0.3, 0.55)
        noise *= rng.uniform(1.8, 3.0)
    lighting = 1 + rng.uniform(0.1, 0.4) * (_value_noise(rng, width, height, 2) - 0.5)
    lighting *= 1 + 0.12 * _fractal_noise(rng, width, height)
    lighting *= 1 + light.side * light.strength * np.linspace(-0.5, 0.5, width, dtype=np.float32)
    blurred = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
    if rng.random() < SHAKE_CHANCE:
        blurred = blurred.filter(_shake(rng))
    pixels = np.asarray(blurred, dtype=np.float32) * lighting[..., None]
    pixels *= gains
    pixels += noise * rng.standard_normal((height, width), dtype=np.float32)[..., None]
    picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < JPEG_CHANCE:
        picture = _jpeg(picture, int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
    return picture


def _white_balance(rng: np.random.Generator) -> np.ndarray:
    """Channel gains of a camera's white balance: warm or cool, a little green or magenta, and
    an exposure a little off."""
    warmth = np.clip(rng.normal(0, 0.6), -1.5, 1.5)
    tint = rng.normal(0, 0.025)
    gains = np.array([1 + 0.08 * warmth, 1 + tint, 1 - 0.08 * warmth], dtype=np.float32)
    return gains / gains.mean() * np.float32(rng.uniform(0.85, 1.15))


def _shake(rng: np.random.Generator) -> ImageFilter.Kernel:
    """Mild motion blur: a streak of 2 to 4 pixels at a random angle, in a 5x5 kernel."""
    angle, length = rng.uniform(0, np.pi), rng.uniform(2, 4)
    weights = np.zeros((5, 5), dtype=np.float32)
    for step in np.linspace(-length / 2, length / 2, 9):
        weights[round(2 + step * np.sin(angle)), round(2 + step * np.cos(angle))] += 1
    return ImageFilter.Kernel((5, 5), weights.ravel().tolist(), scale=float(weights.sum()))


def _jpeg(picture: Image.Image, quality: int) -> Image.Image:
    """The picture after a round trip through a JPEG file of `quality`, as most photos were."""
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _convert(picture: Image.Image, mode: str, rng: np.random.Generator) -> Image.Image:
    """The picture in the file mode the plan asks for, as the real dataset mixes modes."""
    if mode == "P":
        palette = picture.reduce(4).quantize(256)
        return picture.quantize(palette=palette, dither=Image.Dither.NONE)
    if mode == "RGBA":
        width, height = picture.size
        alpha = np.clip(_value_noise(rng, width, height, 3) * 320, 96, 255).astype(np.uint8)
        rgba = picture.convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha))
        return rgba
    return picture.convert(mode)


def _save_image(image: Image.Image, path: Path, orientation: int | None) -> None:
    """Save as PNG; a rotated image is stored turned, with the EXIF tag that turns it back."""
    if orientation is None:
        image.save(path, compress_level=PNG_EFFORT)
        return
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    image.transpose(STORE_TRANSPOSE[orientation]).save(path, compress_level=PNG_EFFORT, exif=exif)


def _stored_mask(mask: Image.Image, plan: _Plan) -> Image.Image:
    """The mask as the plan stores it: soft-edged and/or at another size than the image."""
    if plan.soft_mask:
        mask = mask.filter(ImageFilter.GaussianBlur(1.5))
    if plan.mask_scale is not None:
        width, height = mask.size
        size = (round(width * plan.mask_scale), round(height * plan.mask_scale))
        mask = mask.resize(size, Image.Resampling.NEAREST)
    return mask


def _collage(picture: Image.Image, mask: Image.Image) -> Image.Image:
    """The picture beside a copy with the person tinted red, like the dataset's collage JPEGs.

    `mask` is binary, so blending the whole picture and keeping the blend where the mask is set
    gives the same tint as weighing each pixel by the mask, in PIL's C code.
    """
    red = Image.new("RGB", picture.size, (255, 0, 0))
    tinted = Image.composite(Image.blend(picture, red, 0.6), picture, mask)
    side_by_side = Image.new("RGB", (2 * picture.width, picture.height))
    side_by_side.paste(picture, (0, 0))
    side_by_side.paste(tinted, (picture.width, 0))
    return side_by_side
