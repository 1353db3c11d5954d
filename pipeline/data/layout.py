"""The on-disk layout of the person dataset: a df.csv listing image/mask pairs by relative path."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.errors import PipelineError

INDEX_FILE = "df.csv"
REQUIRED_COLUMNS = ("images", "masks")
MARKER_FILE = ".unet-person.json"


@dataclass(frozen=True)
class Pair:
    """One df.csv row resolved against the folder that holds df.csv."""

    row: int
    image: Path
    mask: Path


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


def read_pairs(index: Path) -> tuple[list[Pair], list[tuple[int, str]]]:
    """Rows of df.csv as pairs, plus (row, reason) for rows that name no image or mask."""
    try:
        frame = pd.read_csv(index, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise PipelineError(
            f"{index} is not a readable CSV ({error}): re-download the dataset"
        ) from error
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise PipelineError(
            f"{index} lacks the column(s) {missing}; it has {list(frame.columns)}. "
            "Expected the dataset's df.csv with 'images' and 'masks' columns"
        )
    pairs: list[Pair] = []
    unusable: list[tuple[int, str]] = []
    for row, (image, mask) in enumerate(zip(frame["images"], frame["masks"], strict=True)):
        if not isinstance(image, str) or not isinstance(mask, str):
            unusable.append((row, "df.csv names no image or no mask"))
            continue
        pairs.append(Pair(row, index.parent / image, index.parent / mask))
    return pairs, unusable


def missing_files(pairs: Iterable[Pair]) -> list[tuple[int, str]]:
    """(row, reason) for every pair whose image or mask file is absent."""
    problems = []
    for pair in pairs:
        absent = [str(path) for path in (pair.image, pair.mask) if not path.is_file()]
        if absent:
            problems.append((pair.row, "missing file " + ", ".join(absent)))
    return problems


def content_digest(index: Path, pairs: Iterable[Pair]) -> str:
    """SHA-256 over df.csv and every listed file that exists, so any changed byte changes it."""
    digest = hashlib.sha256(index.read_bytes())
    for pair in pairs:
        for path in (pair.image, pair.mask):
            if path.is_file():
                digest.update(str(path.relative_to(index.parent)).encode())
                with path.open("rb") as handle:
                    for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                        digest.update(block)
    return digest.hexdigest()[:32]


def write_marker(folder: Path, record: dict) -> None:
    """Record what a step left in `folder`; written last, so it only exists for finished output."""
    temporary = folder / (MARKER_FILE + ".tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True))
    temporary.replace(folder / MARKER_FILE)


def read_marker(folder: Path) -> dict | None:
    """The record a finished step left in `folder`, or None when there is none."""
    try:
        return json.loads((folder / MARKER_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
