"""Mid-epoch checkpoints over shards: a fit stopped part-way through an epoch and resumed from
its last `last.ckpt` sees the rest of that epoch, batch for batch what an uninterrupted fit
sees, so no sample of the epoch is counted twice or left out."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import lightning as L
import pytest
import torch

from pipeline.data.datamodule import PersonDataModule
from pipeline.data.shard_writer import preprocess_to_shards
from pipeline.training.checkpoints import LAST_CHECKPOINT, StepCheckpoint
from tests.data.data_helpers import make_dataset

BATCH = 4
EVERY = 3


class Killed(Exception):
    """What a kill ends the fit with, here raised where the test says."""


class BatchRecorder(L.LightningModule):
    """Notes each training batch's (epoch, step, digests of its masks) and each validation's
    epoch; raises Killed at training step `kill_at` or in the first validation."""

    def __init__(self, kill_at: int | None = None, kill_in_validation: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.kill_at = kill_at
        self.kill_in_validation = kill_in_validation
        self.batches: list[tuple[int, int, tuple[str, ...]]] = []
        self.validated: list[int] = []

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        if self.global_step == self.kill_at:
            raise Killed
        digests = tuple(hashlib.sha256(mask.cpu().numpy().tobytes()).hexdigest() for mask in masks)
        self.batches.append((self.current_epoch, self.global_step, digests))
        return (self.weight * images.mean()).sum()

    def validation_step(self, batch, batch_idx: int) -> None:
        if self.kill_in_validation:
            raise Killed
        if batch_idx == 0:
            self.validated.append(self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    """23 train images: 6 batches an epoch, the last one short, so step 6 ends epoch 0."""
    raw = make_dataset(tmp_path_factory.mktemp("raw"), 29).parent
    output = str(tmp_path_factory.mktemp("shards") / "shards")
    report = preprocess_to_shards(
        raw, output, image_size=16, val_fraction=0.1, test_fraction=0.1, seed=1
    )
    assert report.splits["train"].rows == 23
    return output


def fit(shards: str, module: BatchRecorder, folder: Path, resume: bool = False) -> None:
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[
            StepCheckpoint(folder, EVERY),
            # The fit's epoch-end last.ckpt, written after each validation (training/fit.py).
            L.pytorch.callbacks.ModelCheckpoint(
                folder, Path(LAST_CHECKPOINT).stem, save_top_k=1, enable_version_counter=False
            ),
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    datamodule = PersonDataModule(shards, BATCH, num_workers=2, pin_memory=False, seed=5)
    with contextlib.suppress(Killed):
        trainer.fit(
            module, datamodule=datamodule, ckpt_path=folder / LAST_CHECKPOINT if resume else None
        )


def saved_step(folder: Path) -> int:
    return torch.load(folder / LAST_CHECKPOINT, map_location="cpu", weights_only=False)[
        "global_step"
    ]


def test_a_fit_resumed_mid_epoch_sees_the_rest_of_that_epoch_once(shards, tmp_path) -> None:
    uninterrupted = BatchRecorder()
    fit(shards, uninterrupted, tmp_path / "whole")
    assert [epoch for epoch, *_ in uninterrupted.batches] == [0] * 6 + [1] * 6 + [2] * 6
    epochs = [
        [digest for epoch, _, digests in uninterrupted.batches if epoch == e for digest in digests]
        for e in range(3)
    ]
    assert all(len(seen) == len(set(seen)) == 23 for seen in epochs)
    assert epochs[0] != epochs[1]  # a new order each epoch

    folder = tmp_path / "killed"
    killed = BatchRecorder(kill_at=10)  # the 5th batch of epoch 1
    fit(shards, killed, folder)
    assert saved_step(folder) == 9  # mid-epoch: after the 3rd batch of epoch 1
    resumed = BatchRecorder()
    fit(shards, resumed, folder, resume=True)
    assert resumed.batches[0][:2] == (1, 9)
    kept = [batch for batch in killed.batches if batch[1] < 9]
    assert kept + resumed.batches == uninterrupted.batches
    assert resumed.validated == [1, 2]


def test_no_step_checkpoint_stands_between_an_epoch_and_its_validation(shards, tmp_path) -> None:
    killed = BatchRecorder(kill_in_validation=True)
    fit(shards, killed, tmp_path)
    # At step 3, not 6: resumed from the end of epoch 0's training, the fit would go on to
    # epoch 1 and never validate epoch 0.
    assert saved_step(tmp_path) == EVERY
    resumed = BatchRecorder()
    fit(shards, resumed, tmp_path, resume=True)
    assert resumed.batches[0][:2] == (0, EVERY)
    assert resumed.validated == [0, 1, 2]
