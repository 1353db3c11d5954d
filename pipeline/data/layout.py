"""The on-disk layout of the person dataset: a df.csv listing image/mask pairs by relative path."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError

INDEX_FILE = "df.csv"
REQUIRED_COLUMNS = ("images", "masks")


@dataclass(frozen=True)
class Pair:
    """One df.csv row: an image and a mask named relative to `root`, the folder of df.csv."""

    row: int
    root: Path
    image_name: str
    mask_name: str

    @property
    def image(self) -> Path:
        return self.root / self.image_name

    @property
    def mask(self) -> Path:
        return self.root / self.mask_name

    @property
    def files(self) -> tuple[tuple[str, Path], tuple[str, Path]]:
        """(name in df.csv, path) of the image, then of the mask."""
        return (self.image_name, self.image), (self.mask_name, self.mask)


class OutsideDataset(ValueError):
    """A path in df.csv that leads out of the dataset folder; the message says how."""


def find_index(root: Path) -> Path:
    """The shallowest df.csv under `root`, since archives nest the dataset folder to any depth."""
    if not root.exists():
        raise PipelineError(f"{root} does not exist: run the download step or fix the path")
    candidates = sorted(root.rglob(INDEX_FILE), key=lambda p: (len(p.parts), str(p)))
    if not candidates:
        raise PipelineError(
            f"no {INDEX_FILE} under {root}: point at the folder of the person dataset "
            "(it holds df.csv, images/ and masks/)"
        )
    return candidates[0]


def read_pairs(
    index: Path, shown_as: str | None = None
) -> tuple[list[Pair], list[tuple[int, str]]]:
    """Rows of df.csv as pairs, plus (row, reason) for rows that name no usable image or mask.

    A dataset is someone else's files: df.csv may name any path and a symlink may point
    anywhere. Only paths that stay inside the folder holding df.csv become pairs, so that no
    step opens, copies, hashes or uploads a file from elsewhere on the machine. Errors call
    df.csv `shown_as` (default: its path), for a df.csv in a folder the user never sees.
    """
    shown_as = shown_as or str(index)
    root = index.parent
    real_root = root.resolve()
    if not index.resolve().is_relative_to(real_root):
        raise PipelineError(
            f"{shown_as} is a symlink to a file outside the dataset folder: put the dataset's "
            "own df.csv there"
        )
    try:
        frame = pd.read_csv(index, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise PipelineError(
            f"{shown_as} is not a readable CSV ({error}): re-download the dataset"
        ) from error
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise PipelineError(
            f"{shown_as} lacks the column(s) {missing}; it has {list(frame.columns)}. "
            "Expected the dataset's df.csv with 'images' and 'masks' columns"
        )
    pairs: list[Pair] = []
    unusable: list[tuple[int, str]] = []
    for row, (image, mask) in enumerate(zip(frame["images"], frame["masks"], strict=True)):
        if not isinstance(image, str) or not isinstance(mask, str):
            unusable.append((row, "df.csv names no image or no mask"))
            continue
        try:
            names = [
                _name_inside(real_root, role, name)
                for role, name in (("image", image), ("mask", mask))
            ]
        except OutsideDataset as escape:
            unusable.append((row, str(escape)))
            continue
        pairs.append(Pair(row, root, *names))
    return pairs, unusable


def _name_inside(real_root: Path, role: str, name: str) -> str:
    """`name` without `.` parts and doubled slashes, or OutsideDataset if it leads out of root.

    Any `..` is refused, not only one that leaves: after a symlink, `..` means one folder to
    the kernel and another to the text, and the text is what download lands the file as.
    """
    if os.path.isabs(name):
        raise OutsideDataset(f"{role} path {name!r} escapes the dataset folder (an absolute path)")
    if os.pardir in Path(name).parts:
        raise OutsideDataset(f"{role} path {name!r} escapes the dataset folder (a '..' part)")
    normalised = os.path.normpath(name)
    try:
        real = (real_root / normalised).resolve()
    except (OSError, RuntimeError, ValueError) as error:  # a symlink loop, a NUL in the name
        raise OutsideDataset(f"{role} path {name!r} cannot be followed ({error})") from error
    if not real.is_relative_to(real_root):
        raise OutsideDataset(f"{role} path {name!r} escapes the dataset folder (a symlink out)")
    return normalised


def missing_files(pairs: Iterable[Pair]) -> list[tuple[int, str]]:
    """(row, reason) for every pair whose image or mask file is absent."""
    problems = []
    for pair in pairs:
        absent = [name for name, path in pair.files if not path.is_file()]
        if absent:
            problems.append((pair.row, "missing file " + ", ".join(absent)))
    return problems


def content_digest(index: Path, pairs: Iterable[Pair]) -> str:
    """SHA-256 over df.csv and every listed file that exists, so any changed byte changes it."""
    digest = hashlib.sha256(index.read_bytes())
    for pair in pairs:
        for name, path in pair.files:
            if path.is_file():
                digest.update(name.encode())
                with path.open("rb") as handle:
                    for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                        digest.update(block)
    return digest.hexdigest()[:32]
