"""The preprocess step turns the raw dataset into clean, split, uint8 arrays, or says why not."""

from __future__ import annotations

import errno
import gc
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data_helpers import (
    bomb_png,
    fetched_artifacts,
    file_state,
    leftovers,
    make_dataset,
    pair_pictures,
)
from PIL import ExifTags, Image

from pipeline import folders
from pipeline.data import cache as cache_module
from pipeline.data import preprocess as preprocess_module
from pipeline.data.cache import MANIFEST_FILE, SPLITS, split_paths
from pipeline.data.preprocess import BadRow, load_pair, preprocess, split_rows
from pipeline.entrypoints import preprocess as preprocess_entry_point
from pipeline.errors import PipelineError
from tests.conftest import last_run
from tests.filesystems import tmpfs

SIZE = 32


def _run(raw: Path, out: Path, **overrides: object):
    arguments = {
        "image_size": SIZE,
        "val_fraction": 0.2,
        "test_fraction": 0.1,
        "seed": 0,
        "num_workers": 1,
    }
    arguments.update(overrides)
    return preprocess(raw, out, **arguments)


def _arrays(out: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        split: tuple(np.load(path) for path in split_paths(out, split))  # type: ignore[misc]
        for split in SPLITS
    }


def _manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / MANIFEST_FILE)


def _assignment(out: Path) -> dict[int, str]:
    manifest = _manifest(out)
    return dict(zip(manifest["row"], manifest["split"], strict=True))


def _save(image: Image.Image, path: Path, **options: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def _corrupt(raw: Path) -> dict[int, str]:
    """Spoil rows 2, 5, 9, 13 and 16 of a 20-row dataset four ways; returns the expected reasons."""
    index = raw / "df.csv"
    (raw / "images" / "p002.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    (raw / "images" / "p005.png").unlink()
    (raw / "masks" / "p009.png").write_bytes(b"not an image at all")
    frame = pd.read_csv(index, index_col=0)
    frame.loc[13, "images"] = None
    frame.to_csv(index)
    whole = (raw / "images" / "p016.png").read_bytes()
    (raw / "images" / "p016.png").write_bytes(whole[: len(whole) // 2])
    return {
        2: "unreadable image",
        5: "missing image file",
        9: "unreadable mask",
        13: "df.csv names no image or no mask",
        16: "unreadable image",
    }


# --- the arrays -------------------------------------------------------------------------------


def test_arrays_have_the_promised_shapes_types_and_values(dataset: Path, tmp_path: Path) -> None:
    report = _run(dataset.parent, tmp_path / "out")
    arrays = _arrays(tmp_path / "out")
    counts = {split: len(arrays[split][0]) for split in SPLITS}
    assert counts == {"train": 14, "val": 4, "test": 2}
    for split, (images, masks) in arrays.items():
        assert images.shape == (counts[split], SIZE, SIZE, 3)
        assert masks.shape == (counts[split], SIZE, SIZE)
        assert images.dtype == np.uint8 and masks.dtype == np.uint8
        assert set(np.unique(masks)) == {0, 1}
        assert report.splits[split].rows == counts[split]
        assert report.splits[split].foreground_fraction == pytest.approx(masks.mean())
    assert report.bad_rows == [] and report.resized_masks == 0
    record = folders.read_marker(tmp_path / "out")
    assert record["splits"] == counts and record["digest"] == report.digest
    assert record["image_size"] == SIZE


def test_manifest_rows_match_the_arrays(dataset: Path, tmp_path: Path) -> None:
    _run(dataset.parent, tmp_path / "out")
    manifest, arrays = _manifest(tmp_path / "out"), _arrays(tmp_path / "out")
    assert list(manifest.columns) == ["split", "index", "row", "image", "mask"]
    assert sorted(manifest["row"]) == list(range(20))
    for split in SPLITS:
        rows = manifest[manifest["split"] == split]
        assert list(rows["index"]) == list(range(len(arrays[split][0])))
        for entry in rows.itertuples():
            assert entry.image == f"images/p{entry.row:03d}.png"
            rgb, binary, _ = load_pair(
                dataset.parent / entry.image, dataset.parent / entry.mask, SIZE
            )
            assert np.array_equal(arrays[split][0][entry.index], rgb)
            assert np.array_equal(arrays[split][1][entry.index], binary)


# --- splitting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "val", "test", "expected"),
    [(20, 0.2, 0.1, (14, 4, 2)), (40, 0.15, 0.15, (28, 6, 6)), (7, 0.3, 0.3, (3, 2, 2))],
)
def test_split_counts_follow_the_fractions(
    rows: int, val: float, test: float, expected: tuple[int, int, int]
) -> None:
    split = split_rows(list(range(rows)), val, test, seed=0)
    assert tuple(len(split[name]) for name in ("train", "val", "test")) == expected


def test_split_is_fixed_by_the_seed(dataset: Path, tmp_path: Path) -> None:
    rows = list(range(40))
    assert split_rows(rows, 0.2, 0.2, seed=7) == split_rows(rows, 0.2, 0.2, seed=7)
    assert split_rows(rows, 0.2, 0.2, seed=7) != split_rows(rows, 0.2, 0.2, seed=8)

    first = _run(dataset.parent, tmp_path / "a", seed=3)
    again = _run(dataset.parent, tmp_path / "b", seed=3)
    other = _run(dataset.parent, tmp_path / "c", seed=4)
    assert file_state(tmp_path / "a").keys() == file_state(tmp_path / "b").keys()
    for name in [MANIFEST_FILE, *(p.name for s in SPLITS for p in split_paths(Path(), s))]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert again.digest == first.digest
    assert _assignment(tmp_path / "c") != _assignment(tmp_path / "a")
    assert other.digest != first.digest


def test_splits_are_disjoint_and_cover_every_good_row(dataset: Path, tmp_path: Path) -> None:
    bad = _corrupt(dataset.parent)
    _run(dataset.parent, tmp_path / "out")
    manifest = _manifest(tmp_path / "out")
    members = {split: set(manifest[manifest["split"] == split]["row"]) for split in SPLITS}
    assert members["train"].isdisjoint(members["val"])
    assert members["train"].isdisjoint(members["test"])
    assert members["val"].isdisjoint(members["test"])
    assert set().union(*members.values()) == set(range(20)) - set(bad)
    assert manifest["row"].is_unique


def test_a_bad_row_does_not_move_other_rows(dataset: Path, tmp_path: Path) -> None:
    _run(dataset.parent, tmp_path / "clean")
    clean = _assignment(tmp_path / "clean")
    (dataset.parent / "images" / "p003.png").write_bytes(b"broken")  # fails when decoded
    frame = pd.read_csv(dataset, index_col=0)
    frame.loc[8, "images"] = None  # fails when df.csv is read
    frame.to_csv(dataset)
    _run(dataset.parent, tmp_path / "spoilt")
    spoilt = _assignment(tmp_path / "spoilt")
    assert spoilt == {row: split for row, split in clean.items() if row not in (3, 8)}


# --- decoding one pair ------------------------------------------------------------------------


STORE_TURNED = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(STORE_TURNED))
def test_exif_rotated_image_lines_up_with_its_upright_mask(
    tmp_path: Path, orientation: int
) -> None:
    """A phone photo stored turned, with the tag that turns it back, and a mask drawn upright."""
    upright = np.zeros((32, 48), np.uint8)  # landscape, with a block only in the top-left corner
    upright[2:10, 3:15] = 255
    picture = Image.fromarray(upright).convert("RGB")
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    image = _save(picture.transpose(STORE_TURNED[orientation]), tmp_path / "i.png", exif=exif)
    mask = _save(Image.fromarray(upright), tmp_path / "m.png")
    stored = Image.open(image)
    assert stored.getexif()[ExifTags.Base.Orientation] == orientation
    assert not np.array_equal(np.asarray(stored.convert("L")), upright)  # really stored turned

    rgb, binary, rescaled = load_pair(image, mask, SIZE)
    assert rescaled is False
    bright = rgb[..., 0] > 127
    assert binary[: SIZE // 2, : SIZE // 2].sum() == binary.sum() > 0  # block stays top-left
    overlap = (bright & (binary == 1)).sum() / (bright | (binary == 1)).sum()
    assert overlap > 0.8


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_image_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    picture, mask = pair_pictures(1, (SIZE, SIZE))
    if mode == "RGBA":
        stored = picture.convert("RGBA")
        stored.putalpha(Image.fromarray(np.full((SIZE, SIZE), 90, np.uint8)))
        expected = np.asarray(picture)
    elif mode == "L":
        stored = picture.convert("L")
        expected = np.repeat(np.asarray(stored)[..., None], 3, axis=2)
    else:
        stored = picture.quantize(16)
        expected = np.asarray(stored.convert("RGB"))
        assert len(np.unique(expected.reshape(-1, 3), axis=0)) > 2
    image = _save(stored, tmp_path / "i.png")
    assert Image.open(image).mode == mode
    rgb, binary, _ = load_pair(image, _save(mask, tmp_path / "m.png"), SIZE)
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb, expected)
    assert np.array_equal(binary, (np.asarray(mask) > 127).astype(np.uint8))


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_mask_at_another_size_but_same_aspect_is_accepted(tmp_path: Path, scale: float) -> None:
    picture, mask = pair_pictures(2, (48, 32))
    smaller = mask.resize((round(48 * scale), round(32 * scale)), Image.Resampling.NEAREST)
    image = _save(picture, tmp_path / "i.png")
    _, binary, rescaled = load_pair(image, _save(smaller, tmp_path / "m.png"), SIZE)
    _, reference, same_size = load_pair(image, _save(mask, tmp_path / "full.png"), SIZE)
    assert rescaled is True and same_size is False
    assert (binary != reference).mean() < 0.05
    assert binary.sum() > 0


def test_mask_of_another_aspect_ratio_is_a_bad_row(tmp_path: Path) -> None:
    picture, mask = pair_pictures(3, (48, 32))
    image = _save(picture, tmp_path / "i.png")
    square = _save(mask.resize((32, 32)), tmp_path / "m.png")
    with pytest.raises(BadRow, match="different aspect ratio") as caught:
        load_pair(image, square, SIZE)
    assert "32x32" in str(caught.value) and "48x32" in str(caught.value)


def test_mask_size_problems_in_the_report(tmp_path: Path) -> None:
    index = make_dataset(tmp_path / "raw", 10, size=(48, 32))
    raw = index.parent
    for row, size in ((1, (24, 16)), (6, (72, 48)), (8, (40, 40))):
        path = raw / "masks" / f"p{row:03d}.png"
        Image.open(path).resize(size, Image.Resampling.NEAREST).save(path)
    report = _run(raw, tmp_path / "out", val_fraction=0.1)
    assert report.resized_masks == 2
    assert [(row, reason) for row, _, _, reason in report.bad_rows] == [
        (8, "mask 40x40 does not match image 48x32 (different aspect ratio)")
    ]
    assert sorted(_manifest(tmp_path / "out")["row"]) == [0, 1, 2, 3, 4, 5, 6, 7, 9]


def _mask_result(tmp_path: Path, mask: Image.Image) -> np.ndarray:
    picture, _ = pair_pictures(4, mask.size)
    image = _save(picture, tmp_path / "i.png")
    return load_pair(image, _save(mask, tmp_path / "m.png"), mask.size[0])[1]


def _block(value: int = 255) -> np.ndarray:
    values = np.zeros((SIZE, SIZE), np.uint8)
    values[4:20, 8:24] = value
    return values


def test_a_zero_one_mask_stays_foreground(tmp_path: Path) -> None:
    binary = _mask_result(tmp_path, Image.fromarray(_block(1)))
    assert np.array_equal(binary, _block(1))


def test_an_rgb_mask_works(tmp_path: Path) -> None:
    colour = np.repeat(_block()[..., None], 3, axis=2)
    assert Image.fromarray(colour).mode == "RGB"
    assert np.array_equal(_mask_result(tmp_path, Image.fromarray(colour)), _block(1))


def _palette_mask(indices: np.ndarray, palette: list[int]) -> Image.Image:
    mask = Image.frombytes("P", (SIZE, SIZE), indices.astype(np.uint8).tobytes())
    mask.putpalette(palette)
    assert mask.mode == "P"
    return mask


RED_PALETTE = [0, 0, 0] + [200, 30, 30] * 255  # person drawn in red, not white


@pytest.mark.parametrize("person_index", [1, 15, 200])
def test_a_palette_mask_works(tmp_path: Path, person_index: int) -> None:
    mask = _palette_mask(_block(person_index), RED_PALETTE)
    assert np.array_equal(_mask_result(tmp_path, mask), _block(1))


def test_a_voc_palette_mask_keeps_the_person_and_drops_the_void_outline(tmp_path: Path) -> None:
    """VOC's masks: 0 background, 15 person, 255 the "void" outline drawn around each object."""
    indices = _block(15)
    outline = np.zeros_like(indices, dtype=bool)
    outline[2:22, 6:26] = True
    outline[4:20, 8:24] = False
    indices[outline] = 255
    voc_colours = {0: (0, 0, 0), 15: (192, 128, 128), 255: (224, 224, 192)}
    palette = [channel for index in range(256) for channel in voc_colours.get(index, (0, 0, 0))]
    assert np.array_equal(_mask_result(tmp_path, _palette_mask(indices, palette)), _block(1))


def test_a_grey_palette_mask_is_read_by_its_greys(tmp_path: Path) -> None:
    """A 0/255 mask that a PNG tool stored as a palette image is still a 0/255 mask."""
    mask = Image.fromarray(_block()).convert("P")
    assert mask.mode == "P" and set(np.unique(np.asarray(mask))) == {0, 255}
    assert np.array_equal(_mask_result(tmp_path, mask), _block(1))


def test_a_palette_mask_of_several_classes_is_a_bad_row(tmp_path: Path) -> None:
    indices = _block(15)
    indices[24:30, 2:10] = 7  # a second object class: which of them is the person?
    with pytest.raises(BadRow, match="give a two-class mask") as caught:
        _mask_result(tmp_path, _palette_mask(indices, RED_PALETTE))
    assert "palette mask with 2 classes (indices 7, 15)" in str(caught.value)


def test_an_rgba_mask_works(tmp_path: Path) -> None:
    rgba = np.dstack([_block(), _block(), _block(), np.full((SIZE, SIZE), 255, np.uint8)])
    assert np.array_equal(_mask_result(tmp_path, Image.fromarray(rgba)), _block(1))


def test_antialiased_mask_values_binarise_above_127(tmp_path: Path) -> None:
    values = np.zeros((SIZE, SIZE), np.uint8)
    for column, value in enumerate([0, 30, 100, 127, 128, 160, 250, 255]):
        values[:, column * 4 : column * 4 + 4] = value
    binary = _mask_result(tmp_path, Image.fromarray(values))
    assert np.array_equal(binary, (values > 127).astype(np.uint8))
    assert binary[:, 12:16].sum() == 0 and binary[:, 16:20].all()


# --- bad rows ---------------------------------------------------------------------------------


def test_bad_rows_are_listed_with_their_reason_and_skipped(dataset: Path, tmp_path: Path) -> None:
    expected = _corrupt(dataset.parent)
    report = _run(dataset.parent, tmp_path / "out")
    assert [row for row, *_ in report.bad_rows] == sorted(expected)
    for row, image, mask, reason in report.bad_rows:
        assert reason.startswith(expected[row]), (row, reason)
        if row != 13:
            assert (image, mask) == (f"images/p{row:03d}.png", f"masks/p{row:03d}.png")
    assert sum(split.rows for split in report.splits.values()) == 15
    assert set(_manifest(tmp_path / "out")["row"]).isdisjoint(expected)
    assert sum(len(images) for images, _ in _arrays(tmp_path / "out").values()) == 15


def test_strict_mode_stops_at_a_bad_row_and_names_it(dataset: Path, tmp_path: Path) -> None:
    (dataset.parent / "masks" / "p004.png").unlink()
    with pytest.raises(PipelineError, match="strict") as caught:
        _run(dataset.parent, tmp_path / "out", strict=True)
    assert "row 4 (images/p004.png): missing mask file" in str(caught.value)
    assert str(dataset) in str(caught.value)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_every_row_bad_is_fatal(tmp_path: Path) -> None:
    index = make_dataset(tmp_path / "raw", 6)
    for path in (index.parent / "images").iterdir():
        path.write_bytes(b"corrupt")
    with pytest.raises(PipelineError, match="no usable rows") as caught:
        _run(index.parent, tmp_path / "out", val_fraction=0.2, test_fraction=0.2)
    assert str(index) in str(caught.value)
    assert "6 bad rows" in str(caught.value) and "unreadable image" in str(caught.value)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_a_split_emptied_by_bad_rows_is_named(tmp_path: Path) -> None:
    index = make_dataset(tmp_path / "raw", 10)
    only_val_row = split_rows(list(range(10)), 0.1, 0.2, seed=0)["val"][0]
    (index.parent / "images" / f"p{only_val_row:03d}.png").unlink()
    with pytest.raises(PipelineError, match="no usable rows left in the val split"):
        _run(index.parent, tmp_path / "out", val_fraction=0.1, test_fraction=0.2)


# --- parameters and inputs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction + test_fraction"),
        ({"val_fraction": 0.7, "test_fraction": 0.4}, "val_fraction + test_fraction"),
        ({"image_size": 4}, "image_size"),
        ({"image_size": 0}, "image_size"),
        ({"max_pixels": 0}, "max_pixels"),
        ({"max_pixels": 200_000_000}, "max_pixels"),
    ],
)
def test_bad_parameters_are_named(
    dataset: Path, tmp_path: Path, overrides: dict, named: str
) -> None:
    with pytest.raises(PipelineError) as caught:
        _run(dataset.parent, tmp_path / "out", **overrides)
    assert named in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_too_few_rows_for_a_split_is_named(tmp_path: Path) -> None:
    index = make_dataset(tmp_path / "raw", 3)
    with pytest.raises(PipelineError, match="test split is empty") as caught:
        _run(index.parent, tmp_path / "out", val_fraction=0.1, test_fraction=0.1)
    assert "3 rows" in str(caught.value) and "test_fraction=0.1" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_df_csv_without_masks_column_is_named(dataset: Path, tmp_path: Path) -> None:
    pd.read_csv(dataset, index_col=0).drop(columns="masks").to_csv(dataset)
    with pytest.raises(PipelineError, match="lacks the column") as caught:
        _run(dataset.parent, tmp_path / "out")
    assert str(dataset) in str(caught.value) and "masks" in str(caught.value)


@pytest.mark.parametrize(
    "content", [b"\xff\xfe\x00\x81 binary junk \xff", b"", b'",images,masks\n0,a,b\n']
)
def test_unreadable_df_csv_is_named(dataset: Path, tmp_path: Path, content: bytes) -> None:
    dataset.write_bytes(content)
    with pytest.raises(PipelineError, match="not a readable CSV") as caught:
        _run(dataset.parent, tmp_path / "out")
    assert str(dataset) in str(caught.value)


def test_raw_dir_without_df_csv_is_named(dataset: Path, tmp_path: Path) -> None:
    dataset.unlink()
    with pytest.raises(PipelineError, match=r"no df\.csv under") as caught:
        _run(dataset.parent, tmp_path / "out")
    assert str(dataset.parent) in str(caught.value)
    with pytest.raises(PipelineError, match="does not exist") as caught:
        _run(tmp_path / "nowhere", tmp_path / "out")
    assert str(tmp_path / "nowhere") in str(caught.value)


# --- publishing the output --------------------------------------------------------------------


def test_output_dir_with_user_files_is_refused_and_left_alone(
    dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train_images.npy").write_bytes(b"my own array, not yours")
    (out / "notes.txt").write_text("keep me")
    before = file_state(out)
    with pytest.raises(PipelineError, match="did not write") as caught:
        _run(dataset.parent, out)
    assert "output_dir" in str(caught.value) and str(out) in str(caught.value)
    assert file_state(out) == before
    assert leftovers(tmp_path) == []


def test_a_rerun_replaces_the_previous_output_in_one_swap(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    first = _run(dataset.parent, out, seed=0)
    before = file_state(out)
    (out / "stale.txt").write_text("left over")
    before_with_stale = file_state(out)
    real_publish = folders.publish
    seen: list[dict] = []

    def checking_publish(folder: Path, destination: Path) -> None:
        # Up to the swap the old output is whole, and the new one is complete beside it.
        assert file_state(destination) == before_with_stale
        assert folders.read_marker(folder) is not None
        staged = file_state(folder)
        staged.pop(folders.STAGING_LOCK)  # the staging folder's lock, which publish drops
        seen.append(staged)
        real_publish(folder, destination)

    monkeypatch.setattr(folders, "publish", checking_publish)
    second = _run(dataset.parent, out, seed=1)
    assert len(seen) == 1
    assert file_state(out) == seen[0]
    assert second.digest != first.digest
    assert folders.read_marker(out)["digest"] == second.digest
    assert not (out / "stale.txt").exists()
    assert file_state(out).keys() == before.keys()
    assert leftovers(tmp_path) == []


def test_a_failure_half_way_keeps_the_previous_output(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    _run(dataset.parent, out)
    before = file_state(out)

    (dataset.parent / "images" / "p011.png").write_bytes(b"broken")
    with pytest.raises(PipelineError, match="row 11"):
        _run(dataset.parent, out, strict=True, seed=5)
    assert file_state(out) == before
    assert leftovers(tmp_path) == []

    real_load_pair = preprocess_module.load_pair
    calls: list[Path] = []

    def crash_on_the_sixth(image: Path, mask: Path, *sizes: int):
        calls.append(image)
        if len(calls) == 6:
            raise MemoryError("killed half-way")
        return real_load_pair(image, mask, *sizes)

    monkeypatch.setattr(preprocess_module, "load_pair", crash_on_the_sixth)
    with pytest.raises(MemoryError):
        _run(dataset.parent, out, seed=6)
    assert len(calls) == 6
    assert file_state(out) == before
    assert leftovers(tmp_path) == []


def test_a_full_disk_keeps_the_previous_output_and_says_how_much_was_needed(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    _run(dataset.parent, out)
    before = file_state(out)
    real_append = cache_module.ArrayWriter.append
    appended: list[int] = []

    def disk_full_on_the_fifth(self, row) -> None:
        appended.append(1)
        if len(appended) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_append(self, row)

    monkeypatch.setattr(cache_module.ArrayWriter, "append", disk_full_on_the_fifth)
    with pytest.raises(PipelineError) as raised:
        _run(dataset.parent, out, seed=7)
    message = str(raised.value)
    assert f"no space left on the disk of {tmp_path} to write the split cache: it needed" in message
    assert "--output_dir (main: --processed_dir) on another disk" in message
    assert file_state(out) == before
    assert leftovers(tmp_path) == []


def test_a_real_full_filesystem_keeps_the_previous_output(dataset: Path, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=200k") as small:
        out = small / "out"
        _run(dataset.parent, out)  # about 60 KB at 32 px: fits once, not twice over
        before = file_state(out)
        with pytest.raises(PipelineError, match=f"no space left on the disk of {small}"):
            _run(dataset.parent, out, image_size=64, seed=8)
        assert file_state(out) == before
        assert leftovers(small) == []


# --- workers and memory -----------------------------------------------------------------------


def test_a_process_pool_writes_the_same_bytes(dataset: Path, tmp_path: Path) -> None:
    _corrupt(dataset.parent)
    one = _run(dataset.parent, tmp_path / "one", num_workers=1)
    two = _run(dataset.parent, tmp_path / "two", num_workers=2)
    assert file_state(tmp_path / "one").keys() == file_state(tmp_path / "two").keys()
    for path in sorted((tmp_path / "one").iterdir()):
        assert path.read_bytes() == (tmp_path / "two" / path.name).read_bytes(), path.name
    assert (two.digest, two.bad_rows, two.resized_masks) == (one.digest, one.bad_rows, 0)


def _peak_bytes(raw: Path, out: Path) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        _run(raw, out, image_size=64, val_fraction=0.2, test_fraction=0.2)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    small = make_dataset(tmp_path / "small", 10, size=(64, 64)).parent
    large = make_dataset(tmp_path / "large", 40, size=(64, 64)).parent
    _peak_bytes(small, tmp_path / "warm-up")  # first-call imports and caches are not the point
    small_peak = min(_peak_bytes(small, tmp_path / f"s{i}") for i in range(2))
    large_peak = min(_peak_bytes(large, tmp_path / f"l{i}") for i in range(2))
    # Holding the 30 extra rows' arrays would cost 30 x 64 x 64 x 4 bytes (480 KiB) or more.
    held_extra_rows = 30 * 64 * 64 * 4
    assert large_peak < 1.5 * small_peak + 64 * 1024
    assert large_peak - small_peak < held_extra_rows / 4, (small_peak, large_peak)


# --- images too large to decode -----------------------------------------------------------------


def test_a_decompression_bomb_is_a_bad_row_not_a_crash(tmp_path: Path) -> None:
    """A ~110 KB PNG that claims 30000 x 30000 pixels would decode to gigabytes."""
    index = make_dataset(tmp_path / "raw", 10)
    (index.parent / "images" / "p004.png").write_bytes(bomb_png(30_000))
    out = tmp_path / "out"
    argv = ["--raw_dir", str(index.parent), "--output_dir", str(out), "--image_size", str(SIZE)]
    assert preprocess_entry_point.main([*argv, "--val_fraction", "0.2", "--num_workers", "1"]) == 0

    run = last_run()
    assert run.data.metrics["bad_rows"] == 1
    bad_rows = pd.read_csv(
        fetched_artifacts(run.info.run_id, tmp_path / "fetched") / "bad_rows.csv"
    )
    (reason,) = bad_rows.loc[bad_rows["row"] == 4, "reason"]
    assert reason.startswith("image too large:")
    assert "900000000 pixels" in reason and "max_pixels=64000000" in reason
    assert "raise max_pixels" in reason
    assert sorted(_manifest(out)["row"]) == [0, 1, 2, 3, 5, 6, 7, 8, 9]


def test_images_and_masks_over_max_pixels_are_bad_rows_named_by_size(tmp_path: Path) -> None:
    index = make_dataset(tmp_path / "raw", 10)
    (index.parent / "masks" / "p006.png").write_bytes(bomb_png(9000))
    report = _run(index.parent, tmp_path / "out")
    assert [(row, reason) for row, _, _, reason in report.bad_rows] == [
        (
            6,
            "mask too large: 9000x9000 pixels (81.0 megapixels), over the limit of "
            "max_pixels=64000000 (64 megapixels); raise max_pixels to use it",
        )
    ]


def test_max_pixels_is_a_parameter(tmp_path: Path) -> None:
    index = make_dataset(tmp_path / "raw", 10)
    picture, mask = pair_pictures(3, (96, 80))
    picture.save(index.parent / "images" / "p003.png")
    mask.save(index.parent / "masks" / "p003.png")
    out = tmp_path / "out"
    argv = ["--raw_dir", str(index.parent), "--output_dir", str(out), "--image_size", str(SIZE)]
    argv += ["--val_fraction", "0.2", "--num_workers", "1", "--log_data", "false"]
    assert preprocess_entry_point.main([*argv, "--max_pixels", "5000"]) == 0
    assert last_run().data.metrics["bad_rows"] == 1
    assert 3 not in set(_manifest(out)["row"])
    assert preprocess_entry_point.main([*argv, "--max_pixels", "7680"]) == 0
    assert last_run().data.metrics["bad_rows"] == 0
    assert 3 in set(_manifest(out)["row"])
