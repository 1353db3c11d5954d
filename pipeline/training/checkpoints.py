"""Checkpoints that are whole on disk, and a resume that never dead-ends on one that is not.

Lightning writes a checkpoint to a temporary file under /tmp and moves it onto the target: on
another filesystem the move is a copy, and a full disk or a kill during it leaves a cut-short
`last.ckpt` in place of the whole one. Here every checkpoint is replaced atomically in its own
folder (pipeline/disk.py), through Lightning's public CheckpointIO plugin API. A checkpoint that
still cannot be read (a partial copy from another machine, a failing disk) is set aside before
the fit resumes, and training goes on from the newest one that can.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from pipeline import disk
from pipeline.errors import first_line
from pipeline.tracking.journal import NOTHING, Journal

LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"
# What a Lightning checkpoint must hold for a fit to resume from it.
RESUMABLE_KEYS = ("state_dict", "global_step", "epoch", "loops", "optimizer_states", "callbacks")
FREE_SPACE_ADVICE = "free space there, or give --checkpoint_dir on another disk"


class DurableCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint whole (temporary file in its folder, fsync, rename, fsync of the
    folder); once `last.ckpt` is on disk, the journal may deliver everything up to its step,
    since a resumed fit starts after it and never logs that again."""

    def __init__(self, journal: Journal | None) -> None:
        super().__init__()
        self.journal = journal

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # in memory first, as Lightning does: its size is known
        disk.write_whole(path, buffer.getbuffer(), f"checkpoint {path.name}", FREE_SPACE_ADVICE)
        if self.journal and path.name == LAST_CHECKPOINT:
            self.journal.release(checkpoint["global_step"])


class BestCheckpoint(ModelCheckpoint):
    """The best-by-val-Dice checkpoint; resumed after its file was set aside, it forgets the
    score it can no longer back, so the next validation writes a new one."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if Path(state_dict.get("best_model_path") or "").is_file():
            super().load_state_dict(state_dict)


class StepCheckpoint(ModelCheckpoint):
    """`last.ckpt` every `every` training steps within an epoch, for a loader that keeps its
    place (LitData's, over shards: Lightning stores its state in the checkpoint), so a killed
    fit resumes mid-epoch, each sample of that epoch still seen once.

    Not at an epoch's last batch: the epoch's own checkpoint follows its validation, and one
    written before it would resume past a validation that never ran.
    """

    def __init__(self, dirpath: Path, every: int) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=Path(LAST_CHECKPOINT).stem,
            every_n_train_steps=every,
            save_top_k=1,
            enable_version_counter=False,
        )

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if batch_idx + 1 < trainer.num_training_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


@dataclass(frozen=True)
class ResumePoint:
    """Where a fit goes on from: a readable checkpoint (None: epoch 0) and its training step,
    with the checkpoints that were set aside on the way, as `(set-aside path, reason)`."""

    checkpoint: Path | None
    step: int
    set_aside: tuple[tuple[Path, str], ...] = ()

    def description(self) -> str:
        """For the run's tag and the warning: what was set aside, and from where training goes
        on."""
        moved = "; ".join(f"{path.name} ({reason})" for path, reason in self.set_aside)
        where = (
            f"resumed from {self.checkpoint.name} at step {self.step}"
            if self.checkpoint
            else "no readable checkpoint: training starts again from epoch 0 in the same run"
        )
        return f"set aside {moved}; {where}"


class UnreadableCheckpoint(Exception):
    """A checkpoint a fit cannot resume from; the message says why."""


def resumable_step(path: Path) -> int:
    """The training step of the checkpoint at `path`, once it is read and found resumable.

    Read whole, not memory-mapped, so a cut-short or damaged tensor is found here rather than
    in the middle of Lightning's restore.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    # A cut-short zip raises RuntimeError, an empty file EOFError, garbage UnpicklingError, and
    # damaged pickles many other kinds: whatever stops the read makes it unreadable.
    except Exception as error:
        raise UnreadableCheckpoint(
            f"{type(error).__name__}: {first_line(str(error), 160)}"
        ) from None
    if not isinstance(checkpoint, dict):
        raise UnreadableCheckpoint(f"it holds a {type(checkpoint).__name__}, not a checkpoint")
    missing = [key for key in RESUMABLE_KEYS if key not in checkpoint]
    if missing:
        raise UnreadableCheckpoint(f"it lacks {', '.join(missing)}")
    return int(checkpoint["global_step"])


def resume_point(checkpoint_dir: Path, set_aside: bool) -> ResumePoint:
    """The newest readable checkpoint of a run's folder to resume from.

    `last.ckpt` is the newest; when it cannot be read, `best.ckpt` (an earlier epoch, whole
    state too) is the next. Both are read, since the fit ends by loading the best. With
    `set_aside` (the first rank of a fit), each unreadable one is renamed to
    `<name>.corrupt-<UTC time>`, never deleted, so a second attempt does not meet it again; the
    other ranks only skip what they cannot read.
    """
    moved: list[tuple[Path, str]] = []
    readable: list[tuple[Path, int]] = []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        path = checkpoint_dir / name
        if set_aside:  # what a write killed half-way left (the run's lease says none is live)
            for temporary in checkpoint_dir.glob(f".{name}.*"):
                temporary.unlink(missing_ok=True)
        if not path.is_file():
            continue
        try:
            readable.append((path, resumable_step(path)))
        except UnreadableCheckpoint as unreadable:
            if set_aside:
                aside = path.with_name(f"{name}.corrupt-{stamp}")
                path.rename(aside)
                moved.append((aside, str(unreadable)))
    checkpoint, step = readable[0] if readable else (None, NOTHING)
    return ResumePoint(checkpoint, step, tuple(moved))
