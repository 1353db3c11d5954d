"""Builders for the data-step tests: tiny hand-made datasets, archives, a local HTTP server."""

from __future__ import annotations

import zipfile
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
