"""The synthetic dataset must cross the same edges as the real Supervisely person dataset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import ExifTags, Image, ImageFilter, ImageOps

from pipeline.data.synthetic import (
    BLOCK,
    PARTS,
    SOFT_MASKS_PER_BLOCK,
    _cast_shadows,
    _degrade,
    _Figure,
    _Light,
    _paint,
    generate_dataset,
)

COUNT = 60


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One shared generation: most checks only read it, and generating is the slow part."""
    root = tmp_path_factory.mktemp("synthetic") / "nested" / "person"
    return generate_dataset(root, COUNT, seed=0)


@pytest.fixture(scope="module")
def rows(dataset: Path) -> pd.DataFrame:
    return pd.read_csv(dataset, index_col=0)


def _upright(path: Path) -> Image.Image:
    """The image as a consumer must read it: with its EXIF orientation applied."""
    return ImageOps.exif_transpose(Image.open(path))


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _binary_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The mask resized to the image and binarised the way a consumer must do it."""
    return np.asarray(Image.open(path).resize(size, Image.Resampling.NEAREST)) > 127


def test_writes_the_real_layout_and_returns_df_csv(dataset: Path, rows: pd.DataFrame) -> None:
    root = dataset.parent
    assert dataset == root / "df.csv"
    assert sorted(p.name for p in root.iterdir()) == ["collage", "df.csv", "images", "masks"]
    assert dataset.read_text().splitlines()[0] == ",images,masks,collages"
    assert list(rows.columns) == ["images", "masks", "collages"]
    assert list(rows.index) == list(range(COUNT))
    for image, mask, collage in rows.itertuples(index=False):
        assert image.startswith("images/") and image.endswith(".png")
        assert mask.startswith("masks/") and mask.endswith(".png")
        assert collage.startswith("collage/") and collage.endswith(".jpg")
        assert Path(image).name == Path(mask).name
        assert Path(collage).stem == Path(image).stem


def test_every_listed_file_exists(dataset: Path, rows: pd.DataFrame) -> None:
    listed = [dataset.parent / rel for rel in rows.to_numpy().ravel()]
    assert len(set(listed)) == 3 * COUNT
    assert all(path.is_file() for path in listed)
    on_disk = {path for path in dataset.parent.rglob("*") if path.is_file()} - {dataset}
    assert on_disk == set(listed)


def test_same_count_and_seed_give_identical_files(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "a", 10, seed=3)
    second = generate_dataset(tmp_path / "b", 10, seed=3)
    assert first.read_bytes() == second.read_bytes()
    for rel in pd.read_csv(first, index_col=0).to_numpy().ravel():
        assert np.array_equal(_pixels(first.parent / rel), _pixels(second.parent / rel)), rel


def test_other_seed_gives_other_images(tmp_path: Path) -> None:
    first = generate_dataset(tmp_path / "a", 2, seed=0)
    second = generate_dataset(tmp_path / "b", 2, seed=1)
    rel = pd.read_csv(first, index_col=0)["images"][0]
    assert not np.array_equal(_pixels(first.parent / rel), _pixels(second.parent / rel))


def test_first_images_do_not_depend_on_count(tmp_path: Path) -> None:
    short = generate_dataset(tmp_path / "short", 10, seed=5)
    long = generate_dataset(tmp_path / "long", 20, seed=5)
    short_rows = pd.read_csv(short, index_col=0)
    long_rows = pd.read_csv(long, index_col=0)
    assert short_rows.equals(long_rows.head(10))
    for rel in short_rows.to_numpy().ravel():
        assert np.array_equal(_pixels(short.parent / rel), _pixels(long.parent / rel)), rel


def test_image_modes_are_mixed_like_the_real_data(dataset: Path, rows: pd.DataFrame) -> None:
    images = [Image.open(dataset.parent / rel) for rel in rows["images"]]
    modes = Counter(image.mode for image in images)
    assert set(modes) == {"RGB", "RGBA", "L", "P"}
    assert modes["RGB"] > COUNT / 2
    alphas = [np.asarray(image.getchannel("A")) for image in images if image.mode == "RGBA"]
    assert all((alpha < 255).any() for alpha in alphas)


def test_sizes_vary_within_range(dataset: Path, rows: pd.DataFrame) -> None:
    sizes = [_upright(dataset.parent / rel).size for rel in rows["images"]]
    sides = np.array(sizes)
    assert sides.min() >= 160 and sides.max() <= 640
    assert len(set(sizes)) > COUNT * 0.9
    assert (sides[:, 0] != sides[:, 1]).mean() > 0.9


def test_exif_rotated_images_turn_upright_onto_their_mask(
    dataset: Path, rows: pd.DataFrame
) -> None:
    rotated = 0
    for image_rel, mask_rel, collage_rel in rows.itertuples(index=False):
        raw = Image.open(dataset.parent / image_rel)
        orientation = raw.getexif().get(ExifTags.Base.Orientation)
        if orientation is None:
            continue
        rotated += 1
        assert orientation in (3, 6, 8)
        upright = ImageOps.exif_transpose(raw)
        if orientation != 3:
            assert raw.size == upright.size[::-1]
        mask_w, mask_h = Image.open(dataset.parent / mask_rel).size
        width, height = upright.size
        assert abs(mask_w / mask_h - width / height) < 0.02
        # The collage shows the picture upright: only the right turn reproduces it.
        collage = np.asarray(Image.open(dataset.parent / collage_rel).convert("L"), np.float32)
        shown = collage[:, :width]
        turned = np.asarray(upright.convert("L"), np.float32)
        wrong = np.asarray(upright.transpose(Image.Transpose.ROTATE_180).convert("L"), np.float32)
        assert np.abs(shown - turned).mean() < 4
        assert np.abs(shown - wrong).mean() > 3 * np.abs(shown - turned).mean()
    assert 2 <= rotated <= COUNT * 0.2


def test_some_masks_are_stored_at_another_size(dataset: Path, rows: pd.DataFrame) -> None:
    scales = []
    for image_rel, mask_rel in zip(rows["images"], rows["masks"], strict=True):
        width, height = _upright(dataset.parent / image_rel).size
        mask_w, mask_h = Image.open(dataset.parent / mask_rel).size
        if (mask_w, mask_h) != (width, height):
            assert abs(mask_w / mask_h - width / height) < 0.02
            scales.append(mask_w / width)
    assert 2 <= len(scales) <= COUNT * 0.2
    assert all(0.4 < scale < 0.6 or 1.4 < scale < 1.6 for scale in scales)


def test_masks_line_up_with_the_person_in_the_collage(dataset: Path, rows: pd.DataFrame) -> None:
    """The collage tints the person red, so it shows where the mask must fall once resized.

    A band of 2 px either side of the mask outline is left out: blur and JPEG smear it.
    """
    for image_rel, mask_rel, collage_rel in rows.itertuples(index=False):
        size = _upright(dataset.parent / image_rel).size
        person = _binary_mask(dataset.parent / mask_rel, size)
        outline = Image.fromarray(person)
        inside = np.asarray(outline.filter(ImageFilter.MinFilter(5)))
        near = np.asarray(outline.filter(ImageFilter.MaxFilter(5)))
        collage = np.asarray(Image.open(dataset.parent / collage_rel), np.float32)
        plain, tinted = collage[:, : size[0]], collage[:, size[0] :]
        shown = np.abs(tinted - plain).sum(axis=2) > 40
        assert shown[inside].mean() > 0.98, mask_rel
        assert (shown & ~near).sum() < 0.02 * person.sum(), mask_rel


def test_masks_are_greyscale_with_enough_person(dataset: Path, rows: pd.DataFrame) -> None:
    fractions = []
    for rel in rows["masks"]:
        mask = Image.open(dataset.parent / rel)
        assert mask.mode == "L"
        fraction = (np.asarray(mask) > 127).mean()
        assert fraction >= 0.01, rel
        fractions.append(fraction)
    assert 0.10 <= np.mean(fractions) <= 0.50
    assert np.std(fractions) > 0.05


def test_a_few_masks_have_antialiased_edges(dataset: Path, rows: pd.DataFrame) -> None:
    """Only the masks the plan makes soft are; the picture's softened outlines never leak in."""
    soft = 0
    for rel in rows["masks"]:
        values = np.unique(_pixels(dataset.parent / rel))
        assert values.min() == 0 and values.max() == 255
        soft += len(values) > 2
    assert soft == COUNT // BLOCK * SOFT_MASKS_PER_BLOCK


def _band_energy(grey: Image.Image, region: np.ndarray) -> float:
    """Mean detail between fine and coarse scale (edges, patterns) in `region`; the band starts
    above the scale of sensor noise, so a noisy but defocused scene still scores low."""
    fine = np.asarray(grey.filter(ImageFilter.GaussianBlur(1.5)), np.float32)
    coarse = np.asarray(grey.filter(ImageFilter.GaussianBlur(5)), np.float32)
    return float(np.abs(fine - coarse)[region].mean())


def test_many_photos_have_a_defocused_scene_behind_sharp_people(
    dataset: Path, rows: pd.DataFrame
) -> None:
    """Like portraits shot at a wide aperture: the scene has far less detail than the people.

    Without depth of field, cluttered scenes rarely score below a quarter of the people.
    """
    ratios = []
    for image_rel, mask_rel in zip(rows["images"], rows["masks"], strict=True):
        grey = _upright(dataset.parent / image_rel).convert("L")
        person = Image.fromarray(_binary_mask(dataset.parent / mask_rel, grey.size))
        spread = np.asarray(
            person.convert("L").point([0] + [255] * 255).filter(ImageFilter.GaussianBlur(4))
        )
        core, scene = spread > 250, spread < 5
        if core.sum() >= 200 and scene.sum() >= 200:
            ratios.append(_band_energy(grey, scene) / _band_energy(grey, core))
    ratios = np.array(ratios)
    assert len(ratios) > COUNT * 0.8
    assert (ratios < 0.25).sum() >= COUNT * 0.2
    assert (ratios > 0.5).sum() >= COUNT * 0.2


def _blockiness(grey: Image.Image) -> float:
    """How much larger the steps between pixels are across JPEG's 8x8 block borders than
    elsewhere: about 1 for a picture that never was a JPEG."""
    pixels = np.asarray(grey, np.float32)
    ratios = []
    for steps in (np.abs(np.diff(pixels, axis=1)).mean(axis=0), np.abs(np.diff(pixels, axis=0))):
        steps = steps if steps.ndim == 1 else steps.mean(axis=1)
        borders = steps[7::8]
        ratios.append(borders.mean() / np.delete(steps, np.s_[7::8]).mean())
    return float(np.mean(ratios))


def test_some_photos_went_through_jpeg(dataset: Path, rows: pd.DataFrame) -> None:
    """As most real photos did, though every image is stored as PNG."""
    blocky = sum(
        _blockiness(_upright(dataset.parent / rel).convert("L")) > 1.1 for rel in rows["images"]
    )
    assert COUNT * 0.1 <= blocky <= COUNT * 0.5


def test_photos_differ_in_colour_cast_and_exposure() -> None:
    """One grey scene comes out warm in some photos, cool in others, and dim in a few."""
    canvas = Image.new("RGB", (64, 48), (128, 128, 128))
    level = _Light(side=1, strength=0.0)
    means = np.array(
        [
            np.asarray(_degrade(np.random.default_rng(seed), canvas, level), np.float32)
            .reshape(-1, 3)
            .mean(axis=0)
            for seed in range(40)
        ]
    )
    red_over_blue = means[:, 0] / means[:, 2]
    assert (red_over_blue > 1.06).sum() >= 4 and (red_over_blue < 0.94).sum() >= 4
    brightness = means.mean(axis=1)
    assert 2 <= (brightness < 0.6 * 128).sum() <= 10
    assert (np.abs(brightness - 128) < 0.2 * 128).mean() > 0.7


def _standing_person() -> tuple[np.ndarray, _Figure]:
    """A label map with one boxy person on open ground, feet on row 99, and its figure."""
    labels = np.zeros((120, 160), np.uint8)
    labels[30:100, 70:90] = 1 + PARTS - 1
    return labels, _Figure(cx=80, top=30, height=70)


@pytest.mark.parametrize("side", [-1, 1])
def test_people_cast_soft_shadows_away_from_the_light(side: int) -> None:
    labels, figure = _standing_person()
    ground = np.full((*labels.shape, 3), 160, np.uint8)
    for seed in range(3):
        light = _Light(side=side, strength=0.25)
        shaded = _cast_shadows(np.random.default_rng(seed), ground, labels, [figure], light)
        left, right = shaded[40:100, :64].mean(), shaded[40:100, 96:].mean()
        lit, shadowed = (left, right) if side < 0 else (right, left)
        assert lit == 160 and shadowed < 156
        assert (shaded[108:] == 160).all()  # nothing falls in front of the feet
        assert shaded.min() > 160 * 0.35  # soft and see-through, not black


def test_people_are_brighter_on_the_side_the_light_comes_from() -> None:
    labels, figure = _standing_person()
    palette = np.full((1 + PARTS, 3), 128, np.float32)
    plain = np.zeros(1 + PARTS, bool)
    for seed in range(3):
        right_over_left = {}
        for side in (-1, 1):
            painted = _paint(
                np.random.default_rng(seed),
                np.zeros((*labels.shape, 3), np.uint8),
                labels,
                palette,
                plain,
                ([figure], _Light(side=side, strength=0.25)),
            ).astype(np.float32)
            right_over_left[side] = painted[30:100, 80:90].mean() / painted[30:100, 70:80].mean()
        assert right_over_left[1] > 1.3 * right_over_left[-1]
