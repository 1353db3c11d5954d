"""The preprocessed split cache: uint8 arrays that training memory-maps instead of decoding, or
the same splits as LitData shards in a folder or under s3:// (pipeline/data/shards.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from pipeline import folders
from pipeline.errors import PipelineError
from pipeline.tracking.artifacts import local_input

SPLITS = ("train", "val", "test")
MANIFEST_FILE = "manifest.csv"
MANIFEST_COLUMNS = ["split", "index", "row", "image", "mask"]
ARRAYS = "arrays"
SHARDS = "shards"
FORMATS = (ARRAYS, SHARDS)
S3_SCHEME = "s3://"
# Where preprocess output lives: a local folder, or (shards) an s3:// URI kept as text.
Processed = Path | str


def is_shards(root: Processed) -> bool:
    """Whether `root` names shards: any s3:// URI, or a folder with a split in LitData's layout."""
    text = str(root)
    return text.startswith(S3_SCHEME) or (Path(text) / "train" / "index.json").is_file()


def split_paths(root: Path, split: str) -> tuple[Path, Path]:
    """Where a split's images and masks live inside a cache folder."""
    return root / f"{split}_images.npy", root / f"{split}_masks.npy"


def processed_input(location: str, parameter: str) -> Processed:
    """Where a step reads preprocess output: shards on S3 are streamed where they are (a URI);
    anything else is a local folder, fetched once when it is an MLflow artifact URI."""
    if location.startswith(S3_SCHEME):
        return location.rstrip("/")
    return local_input(location, parameter)


def finished_record(root: Processed) -> dict | None:
    """The record of a finished output at `root`, or None: reuse's test that it is still there."""
    if is_shards(root):
        from pipeline.data.shards import read_record

        return read_record(str(root))
    return folders.read_marker(Path(root))


def read_cache_record(root: Processed) -> dict:
    """The record preprocess wrote last; its absence means the cache is unfinished or not ours."""
    record = finished_record(root)
    if record is None or "splits" not in record:
        raise PipelineError(
            f"{root} is not a finished preprocess output (no {folders.MARKER_FILE}): "
            "run the preprocess step, or pass its output folder or MLflow artifact URI as data_dir"
        )
    if is_shards(root):
        from pipeline.data.shards import verify_split

        for split, count in record["splits"].items():
            verify_split(str(root), split, count)
    return record


def read_manifest_text(root: Processed) -> str:
    """manifest.csv of a finished output: which row of df.csv each sample is."""
    if is_shards(root):
        from pipeline.data.shards import read_file

        return read_file(str(root), MANIFEST_FILE).decode()
    return (Path(root) / MANIFEST_FILE).read_text()


def open_split(root: Processed, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, masks) of one split, read-only: memory-mapped arrays, or for shards two columns
    that read by index and slice the same way."""
    if is_shards(root):
        from pipeline.data.shards import ShardColumn, ShardSplit, stream_cache_dir

        shards = ShardSplit(str(root), split, stream_cache_dir(str(root), f"read-{split}"))
        return ShardColumn(shards, "image"), ShardColumn(shards, "mask")  # type: ignore[return-value]
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

    def __init__(self, path: Path, row_shape: tuple[int, ...]) -> None:
        self.path = path
        self.row_shape = row_shape
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
def array_writer(path: Path, row_shape: tuple[int, ...]) -> Iterator[ArrayWriter]:
    writer = ArrayWriter(path, row_shape)
    try:
        yield writer
    finally:
        writer.close()
