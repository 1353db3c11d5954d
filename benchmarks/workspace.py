"""Generated data for one benchmark run, made once and shared by the benchmarks that need it.

Photos come from the pipeline's own generator (pipeline/data/synthetic.py: the real dataset's
layout and quirks, PNGs of 160 to 640 pixels a side). Rendering one takes about 40 ms on one
core, so a dataset of N rows is made of at most `distinct` rendered pairs, hard-linked under
N names: preprocess, the loaders and their memory see N files to open and decode, whatever
their content.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pipeline.data.preprocess import preprocess
from pipeline.data.synthetic import generate_dataset

SPLIT_SEED = 42
VAL_FRACTION = TEST_FRACTION = 0.15


class Workspace:
    """Datasets (df.csv with images/ and masks/) and preprocessed caches under `folder`."""

    def __init__(self, folder: Path, distinct: int) -> None:
        self.folder = folder
        self.distinct = distinct
        self._pool: pd.DataFrame | None = None

    def _rendered(self) -> pd.DataFrame:
        """The rendered pairs every dataset links to, made on first use."""
        if self._pool is None:
            index = generate_dataset(self.folder / "rendered", self.distinct)
            self._pool = pd.read_csv(index, index_col=0)
        return self._pool

    def raw(self, rows: int) -> Path:
        """A dataset folder of `rows` image/mask pairs, each under its own name."""
        root = self.folder / f"raw-{rows}"
        if (root / "df.csv").is_file():
            return root
        pool = self._rendered()
        for kind in ("images", "masks"):
            (root / kind).mkdir(parents=True, exist_ok=True)
        listed = []
        for row in range(rows):
            source = pool.iloc[row % len(pool)]
            names = []
            for kind in ("images", "masks"):
                stem, suffix = os.path.splitext(os.path.basename(source[kind]))
                name = f"{kind}/{stem}-{row:05d}{suffix}"
                os.link(self.folder / "rendered" / source[kind], root / name)
                names.append(name)
            listed.append(names)
        pd.DataFrame(listed, columns=["images", "masks"]).to_csv(root / "df.csv")
        return root

    def cache(self, rows: int, image_size: int) -> Path:
        """The preprocess output (split cache) of `raw(rows)` at `image_size`."""
        output = self.folder / f"cache-{rows}-{image_size}"
        if not output.is_dir():
            preprocess(
                raw_dir=self.raw(rows),
                output_dir=output,
                image_size=image_size,
                val_fraction=VAL_FRACTION,
                test_fraction=TEST_FRACTION,
                seed=SPLIT_SEED,
                num_workers=1,  # in this process: small caches, and no pool to start
            )
        return output
