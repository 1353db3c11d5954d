"""The preprocessed split cache: uint8 arrays that training memory-maps instead of decoding."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline import folders
from pipeline.errors import PipelineError

SPLITS = ("train", "val", "test")
MANIFEST_FILE = "manifest.csv"


def split_paths(root: Path, split: str) -> tuple[Path, Path]:
    """Where a split's images and masks live inside a cache folder."""
    return root / f"{split}_images.npy", root / f"{split}_masks.npy"


def read_cache_record(root: Path) -> dict:
    """The record preprocess wrote last; its absence means the cache is unfinished or not ours."""
    record = folders.read_marker(root)
    if record is None or "splits" not in record:
        raise PipelineError(
            f"{root} is not a finished preprocess output (no {folders.MARKER_FILE}): "
            "run the preprocess step, or pass its output folder or MLflow artifact URI as data_dir"
        )
    return record


def open_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-mapped (images, masks) of one split, read-only."""
    images_path, masks_path = split_paths(root, split)
    images = np.load(images_path, mmap_mode="r")
    masks = np.load(masks_path, mmap_mode="r")
    if len(images) != len(masks):
        raise PipelineError(
            f"{images_path} holds {len(images)} images but {masks_path} {len(masks)} masks: "
            "the cache is damaged; run preprocess again"
        )
    return images, masks


class ArrayWriter:
    """Append fixed-shape uint8 rows to a .npy file without holding them in memory.

    The count is unknown until every row is decoded, so rows go to a raw file first and the
    .npy header is written in front of them at the end.
    """

    def __init__(self, path: Path, row_shape: tuple[int, ...], digest) -> None:
        self.path = path
        self.row_shape = row_shape
        self.digest = digest
        self.rows = 0
        self._raw = path.with_suffix(".raw")
        self._sink = self._raw.open("wb")

    def append(self, row: np.ndarray) -> None:
        if row.shape != self.row_shape or row.dtype != np.uint8:
            raise ValueError(
                f"row of shape {row.shape} {row.dtype}, expected {self.row_shape} uint8"
            )
        data = np.ascontiguousarray(row).tobytes()
        self._sink.write(data)
        self.digest.update(data)
        self.rows += 1

    def close(self) -> None:
        self._sink.close()
        header = {"descr": "|u1", "fortran_order": False, "shape": (self.rows, *self.row_shape)}
        buffer = bytearray(1 << 20)  # reused, so the copy costs the same for any number of rows
        with self.path.open("wb") as target, self._raw.open("rb", buffering=0) as source:
            np.lib.format.write_array_header_1_0(target, header)
            while count := source.readinto(buffer):
                target.write(memoryview(buffer)[:count])
        self._raw.unlink()


@contextmanager
def array_writer(path: Path, row_shape: tuple[int, ...], digest) -> Iterator[ArrayWriter]:
    writer = ArrayWriter(path, row_shape, digest)
    try:
        yield writer
    finally:
        writer.close()
