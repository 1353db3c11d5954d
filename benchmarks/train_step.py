"""Training images per second of the pipeline's U-Net trained the pipeline's way (its
SegmentationModule in a Lightning Trainer) vs a plain-PyTorch reference loop of the same network
(benchmarks/reference_unet.py); see EXPLANATION.

    python -m benchmarks train_step                   # 64 px, width 16, 10 epochs a side
    python -m benchmarks train_step --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from benchmarks.measure import check_repeats, load_average, median
from benchmarks.reference_unet import ReferenceTrainer, ReferenceUNet
from benchmarks.report import Headline, machine_sections, markdown_table
from pipeline.data.datamodule import PersonDataModule, SplitDataset
from pipeline.model.inputs import to_model_input
from pipeline.model.unet import UNet
from pipeline.settings import with_settings
from pipeline.training.module import SegmentationModule
from pipeline.training.recipes import DEFAULT

TITLE = "Training step: the pipeline vs a plain PyTorch loop"
TARGET = 0.95
TARGET_TEXT = "ours >= 0.95x"
SIDES = ("pipeline", "reference")
EXPLANATION = """\
Training images per second of one network, trained two ways on the same batches of the
preprocessed cache (memory-mapped uint8, made float as the pipeline does), one process, the
machine's default torch threads:
- **pipeline**: `SegmentationModule` (the `default` recipe's loss, optimiser, one-cycle
  schedule and gradient clipping, its train Dice metric and `self.log` calls) fed by
  `PersonDataModule`, in a Lightning `Trainer` set up as `pipeline/training/fit.py` sets it up
  (fp32 on a CPU), without validation, checkpoints or a logger, which other benchmarks measure;
- **reference**: `benchmarks/reference_unet.py`, milesial/Pytorch-UNet's DoubleConv/Down/Up
  blocks at the same widths, depth and batch normalisation, trained by a plain loop with the
  same loss, AdamW settings, gradient clipping and a per-step one-cycle schedule.

The two take turns epoch by epoch in one process: after each of the pipeline's epochs (timed
from its start to its end), a callback runs and times one epoch of the reference loop. A
repeat is one epoch of each; the first epoch of each side is not timed (warm-up). The figure
per side is the median of its epochs' images per second.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=240, help="generated photos (70%% train)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16, help="base channels of both networks")
    parser.add_argument("--depth", type=int, default=DEFAULT.network.depth)
    parser.add_argument("--repeats", type=int, default=10, help="timed epochs per side (>= 3)")


class TakingTurns(L.Callback):
    """Times each of the pipeline's epochs (start to end) and, after each, runs and times one
    epoch of the reference: the two take turns epoch by epoch, so passing load falls on both."""

    def __init__(self, reference: Callable[[], None]) -> None:
        self.reference = reference
        self.seconds: dict[str, list[float]] = {side: [] for side in SIDES}

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.seconds["pipeline"].append(time.perf_counter() - self._started)
        started = time.perf_counter()
        self.reference()
        self.seconds["reference"].append(time.perf_counter() - started)


def reference_epoch(options: argparse.Namespace, cache: Path) -> Callable[[], None]:
    """One epoch of the plain loop over the training split, a call each."""
    loader = DataLoader(SplitDataset(cache, "train"), batch_size=DEFAULT.batch_size, shuffle=True)
    torch.manual_seed(0)
    trainer = ReferenceTrainer(
        ReferenceUNet(width=options.width, depth=options.depth),
        lr=DEFAULT.optimization.lr,
        weight_decay=DEFAULT.optimization.weight_decay,
        total_steps=(options.repeats + 1) * len(loader),
    )

    def epoch() -> None:
        for images, masks in loader:
            trainer.step(to_model_input(images), masks.float())

    return epoch


def run(options: argparse.Namespace) -> dict:
    check_repeats(options.repeats)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    cache = options.workspace.cache(options.images, options.image_size)
    images = len(SplitDataset(cache, "train"))
    settings = with_settings(
        DEFAULT, {"base_channels": options.width, "depth": options.depth, "augment": "none"}
    )
    turns = TakingTurns(reference_epoch(options, cache))
    trainer = L.Trainer(
        max_epochs=options.repeats + 1,  # the first epoch of each side is not timed
        accelerator="cpu",
        devices=1,
        precision="32-true",
        **DEFAULT.optimization.trainer_arguments(),
        callbacks=[turns],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=options.workspace.folder / "train-step",
    )
    torch.manual_seed(0)
    module = SegmentationModule(UNet(settings.network), settings.loss, settings.optimization)
    datamodule = PersonDataModule(cache, settings.batch_size, 0, False, settings.augment)
    before = load_average()
    trainer.fit(module, datamodule=datamodule)
    epochs = {side: seconds[1:] for side, seconds in turns.seconds.items()}
    epoch_rates = {side: [round(images / s, 2) for s in epochs[side]] for side in SIDES}
    rates = {side: median(epoch_rates[side], 1) for side in SIDES}
    ratio = round(rates["pipeline"] / rates["reference"], 3)
    figures = {
        "ratio": ratio,
        "target": TARGET,
        "met": ratio >= TARGET,
        "images_per_s": rates,
        "train_images": images,
        "image_size": options.image_size,
        "width": options.width,
        "depth": options.depth,
        "batch_size": DEFAULT.batch_size,
        "threads": torch.get_num_threads(),
        "repeats": options.repeats,
        "epoch_images_per_s": epoch_rates,
        "load_average": {"before": before, "after": load_average()},
    }
    print(table(figures))
    return figures


def headline(figures: dict) -> Headline:
    rates = figures["images_per_s"]
    return Headline(
        figures=(
            f"{rates['pipeline']:.1f} vs {rates['reference']:.1f} img/s "
            f"({figures['image_size']} px, width {figures['width']})"
        ),
        ratio_text=f"{figures['ratio']:.3f}x",
        target=TARGET_TEXT,
        met=figures["met"],
    )


def table(figures: dict) -> str:
    rates = figures["images_per_s"]
    return markdown_table(
        ["pipeline img/s", "reference img/s", "pipeline / reference"],
        [[f"{rates['pipeline']:.1f}", f"{rates['reference']:.1f}", f"{figures['ratio']:.3f}"]],
        text_columns=0,
    )


def section(results: dict[str, dict]) -> str:
    return machine_sections(
        TITLE,
        EXPLANATION,
        results,
        lambda figures: (
            f"{figures['train_images']} training photos at {figures['image_size']} px, width "
            f"{figures['width']}, depth {figures['depth']}, batch {figures['batch_size']}, "
            f"{figures['threads']} torch threads; {figures['repeats']} timed epochs per side."
            f"\n\n{table(figures)}"
        ),
    )
