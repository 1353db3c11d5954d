"""Training batches per second from the preprocessed cache (the pipeline's PersonDataModule over
memory-mapped uint8 arrays) vs a loader that decodes and resizes every photo and mask as it is
drawn, as the usual U-Net repositories do (see EXPLANATION).

    python -m benchmarks loader                       # 400 photos, 5 repeats
    python -m benchmarks loader --workers 0 2 --repeats 3
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.measure import check_repeats, load_average, median
from benchmarks.report import Headline, machine_sections, markdown_table
from pipeline.data.cache import MANIFEST_FILE
from pipeline.data.datamodule import PersonDataModule

TITLE = "Data loading: preprocessed cache vs decoding per item"
TARGET = 25.0
TARGET_TEXT = "ratio >= 25x"
IMAGE_SIZE = 256
EXPLANATION = f"""\
Batches per second that reach the model in a training epoch, both loaders over the same
training photos, at {IMAGE_SIZE} x {IMAGE_SIZE}, with the same batch size, shuffling and worker
processes:
- **cache**: the pipeline's own `PersonDataModule` (`SplitDataset` over the memory-mapped
  uint8 arrays `preprocess` writes), each batch then made float as its
  `on_after_batch_transfer` does on the training device;
- **decode**: a `Dataset` as the usual U-Net repositories write it (milesial/Pytorch-UNet's
  `BasicDataset`): for every item, PIL opens the photo and the mask (PNG, as in the Kaggle
  dataset), converts and resizes them (bilinear, nearest) and makes float tensors.

Each figure is the median of the timed repeats, after an untimed pass (workers started, files
in the page cache). A repeat draws batches for half a second from each loader in turn, so that
passing load falls on both alike. The photos are the pipeline's generated ones (160 to 640
pixels a side); the real dataset's photos are larger, which makes decoding slower and the ratio
larger. The first worker count, which gives the ratio, is the pipeline's own choice on the
machine (`num_workers=-1`: none on a CPU, where workers would take the cores that train; on a
GPU machine one per two cores, up to 8). The second row is one worker per core: the decoding
loader gains from it, while the cached one loses, since every batch then crosses from a worker
process through shared memory, which costs more than reading it from the memory map.
"""


class DecodingDataset(Dataset):
    """Photo and mask files decoded and resized on every access, as float tensors."""

    def __init__(self, root: Path, pairs: list[tuple[str, str]], size: int) -> None:
        self.root = root
        self.pairs = pairs
        self.size = size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_name, mask_name = self.pairs[index]
        side = (self.size, self.size)
        with Image.open(self.root / image_name) as photo:
            image = photo.convert("RGB").resize(side, Image.Resampling.BILINEAR)
        with Image.open(self.root / mask_name) as stored:
            mask = stored.convert("L").resize(side, Image.Resampling.NEAREST)
        pixels = torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())
        target = torch.from_numpy((np.asarray(mask) > 127)[np.newaxis].astype(np.float32))
        return pixels.float().div_(255), target


def pipeline_workers() -> int:
    """The worker count train picks with num_workers=-1 (pipeline/training/fit.py), for one GPU."""
    if torch.cuda.is_available():
        return max(1, min(8, (torch.multiprocessing.cpu_count() or 2) // 2))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=400, help="generated photos (70%% train)")
    parser.add_argument("--batch-size", type=int, default=8, help="the default recipe's")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[pipeline_workers(), torch.multiprocessing.cpu_count() or 2],
        help="worker counts to compare at; the first gives the ratio",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (>= 3)")
    parser.add_argument(
        "--seconds", type=float, default=0.5, help="each loader's share of a repeat"
    )


def endless(loader: DataLoader) -> Iterator:
    """The loader's batches, pass after pass, so that a timed slice may end mid-pass."""
    while True:
        yield from loader


def batches_per_second(batches: Iterator, prepare: Callable, seconds: float) -> float:
    """Batches a second drawn from `batches` (and prepared) for `seconds` or a little more."""
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        prepare(next(batches))
        count += 1
    return count / (time.perf_counter() - started)


def compare(cache: Path, raw: Path, options: argparse.Namespace, workers: int) -> dict:
    """Both loaders at one worker count: their batches/s, each repeat's, and the ratio."""
    batch_size = options.batch_size
    datamodule = PersonDataModule(cache, batch_size, workers, pin_memory=False)
    datamodule.setup("fit")
    cached = datamodule.train_dataloader()
    manifest = pd.read_csv(cache / MANIFEST_FILE)
    train = manifest[manifest["split"] == "train"]
    pairs = list(zip(train["image"], train["mask"], strict=True))
    decoding = DataLoader(
        DecodingDataset(raw, pairs, IMAGE_SIZE),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    loaders = {
        "cache": (endless(cached), lambda batch: datamodule.on_after_batch_transfer(batch, 0)),
        "decode": (endless(decoding), lambda batch: None),
    }
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for (batches, prepare), loader in zip(loaders.values(), (cached, decoding), strict=True):
        for _ in range(len(loader)):  # untimed: workers up, files in the page cache
            prepare(next(batches))
    for _ in range(options.repeats):
        for name, (batches, prepare) in loaders.items():
            rates[name].append(round(batches_per_second(batches, prepare, options.seconds), 2))
    cache_rate, decode_rate = median(rates["cache"]), median(rates["decode"])
    return {
        "workers": workers,
        "cache_batches_per_s": cache_rate,
        "decode_batches_per_s": decode_rate,
        "cache_images_per_s": round(cache_rate * batch_size, 1),
        "decode_images_per_s": round(decode_rate * batch_size, 1),
        "ratio": round(cache_rate / decode_rate, 2),
        "train_images": len(pairs),
        "repeats_batches_per_s": rates,
    }


def run(options: argparse.Namespace) -> dict:
    check_repeats(options.repeats)
    cache = options.workspace.cache(options.images, IMAGE_SIZE)
    raw = options.workspace.raw(options.images)
    before = load_average()
    settings = [compare(cache, raw, options, workers) for workers in dict.fromkeys(options.workers)]
    headline = settings[0]
    figures = {
        "ratio": headline["ratio"],
        "target": TARGET,
        "met": headline["ratio"] >= TARGET,
        "cache_batches_per_s": headline["cache_batches_per_s"],
        "decode_batches_per_s": headline["decode_batches_per_s"],
        "workers": headline["workers"],
        "image_size": IMAGE_SIZE,
        "batch_size": options.batch_size,
        "train_images": headline["train_images"],
        "repeats": options.repeats,
        "by_workers": settings,
        "load_average": {"before": before, "after": load_average()},
    }
    print(table(figures))
    return figures


def headline(figures: dict) -> Headline:
    return Headline(
        figures=(
            f"cache {figures['cache_batches_per_s']:.1f} vs decode "
            f"{figures['decode_batches_per_s']:.1f} batches/s (batch {figures['batch_size']}, "
            f"{figures['workers']} workers)"
        ),
        ratio_text=f"{figures['ratio']:.1f}x",
        target=TARGET_TEXT,
        met=figures["met"],
    )


def table(figures: dict) -> str:
    header = [
        "workers", "cache batches/s", "decode batches/s", "cache images/s", "decode images/s",
        "cache / decode",
    ]  # fmt: skip
    rows = [
        [
            setting["workers"],
            f"{setting['cache_batches_per_s']:.1f}",
            f"{setting['decode_batches_per_s']:.2f}",
            f"{setting['cache_images_per_s']:.0f}",
            f"{setting['decode_images_per_s']:.0f}",
            f"{setting['ratio']:.1f}x",
        ]
        for setting in figures["by_workers"]
    ]
    return markdown_table(header, rows, text_columns=0)


def section(results: dict[str, dict]) -> str:
    return machine_sections(
        TITLE,
        EXPLANATION,
        results,
        lambda figures: (
            f"{figures['train_images']} training photos at {figures['image_size']} px, batch "
            f"{figures['batch_size']}, each figure the median of {figures['repeats']} "
            f"repeats.\n\n{table(figures)}"
        ),
    )
