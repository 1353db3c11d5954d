"""Decode, clean, resize and split the raw dataset into a cache training reads without decoding.

Each split becomes two uint8 `.npy` arrays (images N x S x S x 3, masks N x S x S in {0, 1}) that
training memory-maps, or (output_format=shards) LitData shards of the same samples in a folder or
under s3:// that training streams. Rows stream through a process pool straight to disk or to the
bucket, so peak memory does not grow with the dataset. Rows that cannot be used are skipped and
listed with their reason. The fingerprint is built from each written pair in row order, so the
same data gives the same digest in either format.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import disk, folders
from pipeline.console import progress
from pipeline.data import layout
from pipeline.data.cache import (
    ARRAYS,
    FORMATS,
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    S3_SCHEME,
    SPLITS,
    array_writer,
    split_paths,
)
from pipeline.errors import PipelineError
from pipeline.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    TooManyPixels,
    open_image,
    square_pixels,
)

FREE_SPACE_ADVICE = "free space there, or give --output_dir (main: --processed_dir) on another disk"
ASPECT_TOLERANCE = 0.02
# Pillow raises DecompressionBombError above twice its warning limit, whatever max_pixels says.
PILLOW_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
VOID_INDEX = 255  # VOC palette masks draw this outline around objects: not part of them


class BadRow(Exception):
    """A row that cannot be used; its message is the reason written to bad_rows.csv."""


@dataclass
class SplitReport:
    """What was written for one split."""

    rows: int = 0
    foreground_pixels: int = 0
    total_pixels: int = 0

    def count(self, mask: np.ndarray) -> None:
        self.rows += 1
        self.foreground_pixels += int(mask.sum())
        self.total_pixels += mask.size

    @property
    def foreground_fraction(self) -> float:
        return self.foreground_pixels / self.total_pixels if self.total_pixels else 0.0


@dataclass
class PreprocessReport:
    """The whole step's outcome, logged to MLflow by the entry point."""

    output_dir: Path | str  # str: an s3:// URI of shards
    raw_digest: str
    digest: str
    splits: dict[str, SplitReport]
    bad_rows: list[tuple[int, str, str, str]] = field(default_factory=list)
    resized_masks: int = 0


def load_pair(
    image_path: Path, mask_path: Path, size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Decode one pair into (RGB image, {0,1} mask) at size x size; the flag: mask was rescaled.

    EXIF orientation is applied to both files, because phones store pixels rotated and the
    masks were drawn on the upright picture.
    """
    image = _open(image_path, "image", max_pixels)
    mask = _open(mask_path, "mask", max_pixels)
    rescaled = image.size != mask.size
    if rescaled:
        image_aspect = image.width / image.height
        mask_aspect = mask.width / mask.height
        if abs(image_aspect - mask_aspect) > ASPECT_TOLERANCE * image_aspect:
            raise BadRow(
                f"mask {mask.width}x{mask.height} does not match image {image.width}x{image.height}"
                " (different aspect ratio)"
            )
    rgb = square_pixels(image, size)
    mask_values = np.asarray(_mask_channel(mask).resize((size, size), Image.Resampling.NEAREST))
    # Masks are 0/255; a 0/1 mask would vanish under the >127 rule, so honour it as it is.
    cut = 0 if mask_values.max() <= 1 else 127
    return rgb, (mask_values > cut).astype(np.uint8), rescaled


def _open(path: Path, role: str, max_pixels: int) -> Image.Image:
    if not path.is_file():
        raise BadRow(f"missing {role} file")
    try:
        return open_image(path, max_pixels)
    except TooManyPixels as error:
        raise BadRow(f"{role} too large: {error}; raise max_pixels to use it") from error
    except ImageError as error:
        raise BadRow(f"unreadable {role}: {error}") from error


def _mask_channel(mask: Image.Image) -> Image.Image:
    """One channel of a mask in any mode: above 127 (or 0, in a 0/1 mask) is the person.

    Colour masks go grey. A palette mask is read by its greys when all its colours are grey
    (a 0/255 mask that a PNG tool stored with a palette); otherwise its indices are classes,
    as in VOC: 0 is background, 255 the "void" outline (background too), and the one other
    index is the person.
    """
    if mask.mode == "P":
        colours = np.asarray(mask.convert("RGB"))
        if (colours == colours[..., :1]).all():
            return Image.fromarray(colours[..., 0])
        indices = np.asarray(mask)
        classes = sorted(set(np.unique(indices).tolist()) - {0, VOID_INDEX})
        if len(classes) > 1:
            raise BadRow(
                f"palette mask with {len(classes)} classes (indices "
                f"{', '.join(map(str, classes))}) besides background 0 and void 255: give a "
                "two-class mask"
            )
        return Image.fromarray(np.where(np.isin(indices, classes), 255, 0).astype(np.uint8))
    if mask.mode in ("RGBA", "LA"):
        mask = mask.convert(mask.mode[:-1])
    return mask.convert("L")


def split_rows(rows: list[int], val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Deterministic split of row numbers; a bad row leaves every other row where it was."""
    order = np.random.default_rng(seed).permutation(len(rows))
    n_test = round(len(rows) * test_fraction)
    n_val = round(len(rows) * val_fraction)
    shuffled = [rows[i] for i in order]
    return {
        "test": sorted(shuffled[:n_test]),
        "val": sorted(shuffled[n_test : n_test + n_val]),
        "train": sorted(shuffled[n_test + n_val :]),
    }


def check_settings(
    image_size: int,
    val_fraction: float,
    test_fraction: float,
    max_pixels: int,
    output_format: str = ARRAYS,
    output_dir: str = "",
) -> None:
    """The preprocess parameters, checked before any run opens."""
    if output_format not in FORMATS:
        raise PipelineError(
            f"parameter output_format={output_format!r} is not one of {', '.join(FORMATS)}"
        )
    if output_dir.startswith(S3_SCHEME) and output_format == ARRAYS:
        raise PipelineError(
            f"output_dir={output_dir} is on S3, where arrays cannot be memory-mapped: add "
            "--output_format shards, or give a local folder"
        )
    if image_size < 8:
        raise PipelineError(f"parameter image_size={image_size} must be at least 8")
    if not 1 <= max_pixels <= PILLOW_MAX_PIXELS:
        raise PipelineError(
            f"parameter max_pixels={max_pixels} must be between 1 and {PILLOW_MAX_PIXELS} (Pillow "
            f"refuses larger images); the default is {DEFAULT_MAX_PIXELS}"
        )
    check_fractions(val_fraction, test_fraction)


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise PipelineError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    if val_fraction + test_fraction >= 1:
        raise PipelineError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction} leaves nothing to "
            "train on: make their sum less than 1"
        )


def decode_task(
    task: tuple[int, str, str, int, int],
) -> tuple[int, np.ndarray | None, np.ndarray | None, bool, str]:
    row, image, mask, size, max_pixels = task
    try:
        rgb, binary, rescaled = load_pair(Path(image), Path(mask), size, max_pixels)
    except BadRow as problem:
        return row, None, None, False, str(problem)
    return row, rgb, binary, rescaled, ""


def split_tasks(
    by_row: dict[int, layout.Pair], rows: list[int], image_size: int, max_pixels: int
) -> list[tuple[int, str, str, int, int]]:
    """decode_task's input for each usable row of a split, in row order."""
    return [
        (row, str(by_row[row].image), str(by_row[row].mask), image_size, max_pixels)
        for row in rows
        if row in by_row
    ]


def preprocess(
    raw_dir: Path,
    output_dir: Path,
    image_size: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    strict: bool = False,
    num_workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PreprocessReport:
    """Write the split cache for the dataset under `raw_dir` to `output_dir` atomically."""
    check_settings(image_size, val_fraction, test_fraction, max_pixels)
    output_dir = Path(output_dir).expanduser().resolve()
    folders.check_replaceable(output_dir, "output_dir")
    index, pairs, assignment, report = plan(raw_dir, output_dir, val_fraction, test_fraction, seed)
    rows = len(report.bad_rows) + len(pairs)
    # Every split's photos (3 bytes a pixel) and masks (1), and the train photos once more
    # while their rows are moved behind the .npy header.
    needed = (rows * 4 + len(assignment["train"]) * 3) * image_size**2
    with (
        folders.staging_beside(output_dir) as staging,
        disk.space_for(output_dir.parent, "the split cache", needed, FREE_SPACE_ADVICE),
    ):
        manifest = _write_splits(
            staging, pairs, assignment, image_size, max_pixels, num_workers, report
        )
        finish(report, index, strict)
        manifest.to_csv(staging / MANIFEST_FILE, index=False)
        report.digest = finish_digest(report.digest, staging / MANIFEST_FILE)
        folders.write_marker(staging, record_of(report, image_size, ARRAYS))
        folders.publish(staging, output_dir)
    return report


def plan(
    raw_dir: Path, output: Path | str, val_fraction: float, test_fraction: float, seed: int
) -> tuple[Path, list[layout.Pair], dict[str, list[int]], PreprocessReport]:
    """The dataset's index, its usable pairs, the split of its rows and the report begun."""
    index = layout.find_index(raw_dir)
    pairs, unusable = layout.read_pairs(index)
    rows = len(pairs) + len(unusable)
    if rows == 0:
        raise PipelineError(f"{index} lists no rows: the dataset is empty")
    assignment = split_rows(list(range(rows)), val_fraction, test_fraction, seed)
    for split, members in assignment.items():
        if not members:
            raise PipelineError(
                f"the {split} split is empty: {rows} rows with val_fraction={val_fraction}"
                f" and test_fraction={test_fraction}; add data or raise the {split} fraction"
            )
    report = PreprocessReport(output, layout.content_digest(index, pairs), "", {})
    report.bad_rows = [(row, "", "", reason) for row, reason in unusable]
    return index, pairs, assignment, report


def finish(report: PreprocessReport, index: Path, strict: bool) -> None:
    report.bad_rows.sort()
    _check_usable(report, index, strict)


def record_of(report: PreprocessReport, image_size: int, output_format: str) -> dict:
    """What the marker says of a finished output: train, evaluate and main read it."""
    return {
        "digest": report.digest,
        "raw_digest": report.raw_digest,
        "image_size": image_size,
        "format": output_format,
        "splits": {name: split.rows for name, split in report.splits.items()},
        "foreground_fraction": {
            name: split.foreground_fraction for name, split in report.splits.items()
        },
    }


def _write_splits(
    staging: Path,
    pairs: list[layout.Pair],
    assignment: dict[str, list[int]],
    image_size: int,
    max_pixels: int,
    num_workers: int,
    report: PreprocessReport,
) -> pd.DataFrame:
    """Stream every split's decoded rows to its arrays; returns the manifest of written rows."""
    by_row = {pair.row: pair for pair in pairs}
    digest = hashlib.sha256()  # of each written pair's digest, in split and row order
    manifest = []
    workers = num_workers if num_workers > 0 else (os.cpu_count() or 1)
    with _parallel_map(workers) as imap:
        for split in SPLITS:
            tasks = split_tasks(by_row, assignment[split], image_size, max_pixels)
            written = SplitReport()
            images_path, masks_path = split_paths(staging, split)
            with (
                array_writer(images_path, (image_size, image_size, 3)) as images,
                array_writer(masks_path, (image_size, image_size)) as masks,
            ):
                decoded = progress(
                    imap(decode_task, tasks),
                    total=len(tasks),
                    desc=f"preprocess {split}",
                    unit="img",
                )
                for row, rgb, binary, rescaled, reason in decoded:
                    image, mask = by_row[row].image_name, by_row[row].mask_name
                    if rgb is None:
                        report.bad_rows.append((row, image, mask, reason))
                        continue
                    manifest.append((split, written.rows, row, image, mask))
                    images.append(rgb)
                    masks.append(binary)
                    digest.update(row_digest(rgb, binary))
                    written.count(binary)
                    report.resized_masks += rescaled
            report.splits[split] = written
    report.digest = digest.hexdigest()
    return pd.DataFrame(manifest, columns=MANIFEST_COLUMNS)


def row_digest(image: np.ndarray, mask: np.ndarray) -> bytes:
    """One pair's fingerprint; the output's is built from these in row order, whatever the
    format."""
    return hashlib.sha256(image.tobytes() + mask.tobytes()).digest()


def finish_digest(rows_digest: str, manifest: Path | bytes) -> str:
    data = manifest if isinstance(manifest, bytes) else manifest.read_bytes()
    return hashlib.sha256(rows_digest.encode() + data).hexdigest()[:32]


@contextmanager
def _parallel_map(workers: int) -> Iterator:
    """An ordered, lazy map over a process pool; plain map for one worker (no fork cost)."""
    if workers == 1:
        yield map
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield lambda function, tasks: pool.imap(function, tasks, chunksize=4)


def _check_usable(report: PreprocessReport, index: Path, strict: bool) -> None:
    described = "; ".join(
        f"row {row} ({image or 'no image'}): {reason}"
        for row, image, _, reason in report.bad_rows[:3]
    )
    if strict and report.bad_rows:
        raise PipelineError(
            f"{len(report.bad_rows)} bad row(s) in {index} and strict is on: {described}. "
            "Fix or remove those rows, or run with strict=false to skip them"
        )
    empty = [name for name, split in report.splits.items() if split.rows == 0]
    if empty:
        raise PipelineError(
            f"no usable rows left in the {', '.join(empty)} split(s) of {index} "
            f"({len(report.bad_rows)} bad rows, e.g. {described})"
        )
