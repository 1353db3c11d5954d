"""What whole checkpoints cost: one checkpoint save through Lightning's own TorchCheckpointIO vs
the project's DurableCheckpointIO (temporary file in the target's folder, fsync, rename, fsync
of the folder), on the same disk (see EXPLANATION).

    python -m benchmarks checkpoint_save                      # 5 repeats, in ./.benchmark-*
    python -m benchmarks checkpoint_save --repeats 3 --folder /mnt/other-disk
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from benchmarks.measure import check_repeats, load_average, median
from benchmarks.report import machine_sections, markdown_table
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.training.checkpoints import DurableCheckpointIO

TITLE = "Checkpoint save: whole (fsync + rename) vs Lightning's"
NETWORKS = {
    "default": {"base_channels": 64, "depth": 4, "batch_norm": True},  # the `default` recipe's
    "small": {"base_channels": 16, "depth": 4, "batch_norm": True},
}
EXPLANATION = """\
One `save_checkpoint` call each, the two taking turns so that other load on the machine falls on
both alike, each figure the median of the repeats. The checkpoint is what Lightning writes for
the U-Net: its weights and Adam's two moments per weight (after one optimizer step), about three
times the weights' size. Both serialise to memory first (Lightning's `_atomic_save` does the
same); Lightning then writes through fsspec, with no fsync, while DurableCheckpointIO writes a
temporary file beside the target, fsyncs it, renames it over the old checkpoint and fsyncs the
folder. The fsyncs are the price of a checkpoint that a power cut or a full disk never leaves
half-written; a fit saves two checkpoints an epoch (best and last), so the cost per epoch is
twice the difference, against epochs of minutes on the full data.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=5, help="saves per figure (>= 3)")
    parser.add_argument(
        "--folder", type=Path, default=Path.cwd(), help="disk to write on (a scratch folder in it)"
    )


def checkpoint_of(network: dict) -> dict:
    """A checkpoint as Lightning's carries it: weights and optimizer state, step and epoch."""
    torch.manual_seed(0)
    net = UNet(NetworkConfig.from_dict(network))
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.rand(2, 3, 32, 32)).mean().backward()
    optimizer.step()
    return {
        "state_dict": net.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "global_step": 1,
        "epoch": 0,
    }


def filesystem_of(folder: Path) -> str:
    """The type of the filesystem holding `folder` (ext4, xfs, tmpfs, nfs...)."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        _, mount_point, fs_type, *_ = line.split()
        if str(folder.resolve()).startswith(mount_point) and len(mount_point) > len(best):
            best, kind = mount_point, fs_type
    return kind


def run(options: argparse.Namespace) -> dict:
    check_repeats(options.repeats)
    before = load_average()
    writers = {"lightning": TorchCheckpointIO(), "durable": DurableCheckpointIO(journal=None)}
    by_network = {}
    with tempfile.TemporaryDirectory(prefix=".benchmark-checkpoint-", dir=options.folder) as work:
        for name, network in NETWORKS.items():
            checkpoint = checkpoint_of(network)
            seconds = {writer: [] for writer in writers}
            for repeat in range(options.repeats + 1):  # the first, a warm-up, is not counted
                for writer, checkpoint_io in writers.items():
                    target = Path(work) / f"{writer}.ckpt"
                    started = time.perf_counter()
                    checkpoint_io.save_checkpoint(checkpoint, target)
                    if repeat:
                        seconds[writer].append(time.perf_counter() - started)
            size = os.path.getsize(Path(work) / "durable.ckpt")
            by_network[name] = {
                "network": network,
                "checkpoint_mb": round(size / 1e6, 1),
                "repeats_s": seconds,
                "seconds": {writer: median(values, 4) for writer, values in seconds.items()},
            }
    figures = {
        "repeats": options.repeats,
        "filesystem": filesystem_of(options.folder),
        # Lightning's temporary file lies there: on another filesystem its move is a copy.
        "tmp_on_same_filesystem": os.stat(tempfile.gettempdir()).st_dev
        == os.stat(options.folder).st_dev,
        "load_average": {"before": before, "after": load_average()},
        "by_network": by_network,
    }
    print(table(figures))
    return figures


def table(figures: dict) -> str:
    header = ["network", "checkpoint", "Lightning's save", "whole save", "extra"]
    rows = []
    for name, measured in figures["by_network"].items():
        plain, whole = measured["seconds"]["lightning"], measured["seconds"]["durable"]
        rows.append(
            [
                f"{name} ({measured['network']['base_channels']} channels)",
                f"{measured['checkpoint_mb']} MB",
                f"{plain:.3f} s",
                f"{whole:.3f} s",
                f"{whole - plain:+.3f} s",
                f"{whole / plain:.2f}",
            ]
        )
    return markdown_table([*header, "whole / Lightning's"], rows)


def section(results: dict[str, dict]) -> str:
    def details(figures: dict) -> str:
        tmp = "the same filesystem" if figures["tmp_on_same_filesystem"] else "another filesystem"
        return (
            f"on {figures['filesystem']} (/tmp, where Lightning's temporary file goes, on {tmp}), "
            f"each figure the median of {figures['repeats']} saves.\n\n{table(figures)}"
        )

    return machine_sections(TITLE, EXPLANATION, results, details)
