"""Tiny split caches in preprocess's format, with a pattern a few steps can learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import folders
from pipeline.data.cache import SPLITS, array_writer, split_paths

SIDE = 16
COUNTS = {"train": 8, "val": 4, "test": 4}


def _easy_pair(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright rectangle (the person) on a dark noisy background: brightness alone tells."""
    mask = np.zeros((side, side), dtype=np.uint8)
    top, left = rng.integers(0, side // 2, size=2)
    height, width = rng.integers(4, side // 2 + 1, size=2)
    mask[top : top + height, left : left + width] = 1
    noise = rng.integers(0, 40, size=(side, side, 3))
    image = np.where(mask[..., None] == 1, 200, 30) + noise
    return image.astype(np.uint8), mask


def write_cache(
    root: Path, seed: int = 0, side: int = SIDE, counts: dict[str, int] | None = None
) -> Path:
    """A cache folder in preprocess's format: {split}_images.npy (N,H,W,3), _masks.npy (N,H,W)."""
    counts = counts or COUNTS
    rng = np.random.default_rng(seed)
    for split in SPLITS:
        images_path, masks_path = split_paths(root, split)
        with (
            array_writer(images_path, (side, side, 3)) as images,
            array_writer(masks_path, (side, side)) as masks,
        ):
            for _ in range(counts[split]):
                image, mask = _easy_pair(rng, side)
                images.append(image)
                masks.append(mask)
    return root


def write_finished_cache(root: Path, side: int, counts: dict[str, int]) -> Path:
    """A cache with preprocess's record too, as the train entry point takes it as data_dir."""
    root.mkdir(parents=True, exist_ok=True)
    write_cache(root, side=side, counts=counts)
    record = {"digest": f"test-{side}-{sorted(counts.items())}", "image_size": side}
    folders.write_marker(root, {**record, "splits": counts})
    return root
