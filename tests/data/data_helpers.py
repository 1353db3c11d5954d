"""Builders for the data-step tests: tiny hand-made datasets, archives, a local HTTP server."""

from __future__ import annotations

import functools
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.data import layout


def pair_pictures(index: int, size: tuple[int, int] = (48, 40)) -> tuple[Image.Image, Image.Image]:
    """A noisy RGB picture with a bright box, and the 0/255 mask of that box; distinct per index."""
    width, height = size
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 100, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), np.uint8)
    left = int(rng.integers(0, width // 2))
    top = int(rng.integers(0, height // 2))
    mask[top : top + height // 3, left : left + width // 3] = 255
    pixels[mask > 0] = rng.integers(150, 256, 3, dtype=np.uint8)
    return Image.fromarray(pixels), Image.fromarray(mask)


def make_dataset(root: Path, count: int, size: tuple[int, int] = (48, 40)) -> Path:
    """`count` PNG pairs in the real layout (df.csv with an unnamed index column); returns it."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        picture, mask = pair_pictures(index, size)
        image_rel, mask_rel = f"images/p{index:03d}.png", f"masks/p{index:03d}.png"
        picture.save(root / image_rel)
        mask.save(root / mask_rel)
        rows.append((image_rel, mask_rel))
    index_path = root / layout.INDEX_FILE
    pd.DataFrame(rows, columns=["images", "masks"]).to_csv(index_path)
    return index_path


def zip_folder(folder: Path, archive: Path, prefix: str = "") -> Path:
    """Zip every file under `folder`, stored under `prefix` inside the archive."""
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                bundle.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def file_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `folder` with its bytes and mtime, to prove nothing was touched."""
    return {
        path.relative_to(folder).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def leftovers(parent: Path) -> list[str]:
    """Staging or retired folders that a step left beside its output."""
    return sorted(
        path.name
        for path in parent.iterdir()
        if ".staging-" in path.name or ".retired-" in path.name
    )


@dataclass
class LocalServer:
    """An HTTP server on 127.0.0.1 that serves `routes` and logs every request path."""

    base: str
    routes: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path


def secret_picture(folder: Path, size: tuple[int, int] = (48, 40)) -> Path:
    """A PNG to keep outside the dataset, in a colour no pair_pictures image has."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "private.png"
    Image.fromarray(np.full((size[1], size[0], 3), (123, 7, 231), np.uint8)).save(path)
    return path


def edit_row(index: Path, row: int, **values: str) -> None:
    """Overwrite cells of one df.csv row, e.g. images="../secret/private.png"."""
    frame = pd.read_csv(index, index_col=0)
    for column, value in values.items():
        frame.loc[row, column] = value
    frame.to_csv(index)


def fetched_artifacts(run_id: str, folder: Path) -> Path:
    """Every artifact of a run, fetched through MLflow into `folder`, as a reader would see them."""
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(folder)))


def every_byte_string(folder: Path) -> list[bytes]:
    """The content of every file under `folder`, links followed, to search for leaked bytes."""
    return [path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()]


@functools.cache
def bomb_png(side: int) -> bytes:
    """A black 1-bit PNG of side x side pixels: 30000 makes ~110 KB that decode to 900 MP."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte, then eight pixels a byte
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        checksum = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", checksum)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )
