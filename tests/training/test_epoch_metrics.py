"""A kill right after `last.ckpt` is written loses no metric: the fit resumes after that
epoch, so the journal must already hold the epoch's training metrics. Lightning logs them only
after its checkpoint callbacks ran; a hard-killed `main` once lost one epoch's
train_loss_epoch that way (tests/e2e/test_hard_kill.py)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import mlflow
import pytest

from pipeline.settings import with_settings
from pipeline.training.checkpoints import LAST_CHECKPOINT, DurableCheckpointIO
from pipeline.training.fit import fit
from pipeline.training.recipes import DEFAULT
from pipeline.training.runtime import RuntimeConfig
from tests.training.caches import write_cache

EPOCHS = 3
SETTINGS = {"base_channels": 2, "depth": 1, "batch_size": 4, "max_epochs": EPOCHS}


def test_each_last_checkpoint_is_written_after_its_epochs_training_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held_at_save: list[set[str]] = []
    save = DurableCheckpointIO.save_checkpoint

    def noting_what_the_journal_holds(self, checkpoint, path, storage_options=None) -> None:
        if Path(path).name == LAST_CHECKPOINT:
            epoch_end = checkpoint["global_step"] - 1  # the step Lightning logs epoch metrics at
            held_at_save.append({key for key, step in self.journal._seen if step == epoch_end})
        save(self, checkpoint, path, storage_options)

    monkeypatch.setattr(DurableCheckpointIO, "save_checkpoint", noting_what_the_journal_holds)
    recipe = with_settings(DEFAULT, {**SETTINGS, "augment": "none"})
    runtime = RuntimeConfig(accelerator="cpu", num_workers=0, checkpoint_dir=str(tmp_path))
    with mlflow.start_run() as run, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        fit(recipe, runtime, write_cache(tmp_path), run.info.run_id, seed=0, grid_every=5)

    assert len(held_at_save) == EPOCHS
    for held in held_at_save:
        assert {"train_loss_epoch", "train_dice", "epoch_time_s"} <= held, held


def test_a_fit_says_its_size_in_one_line_without_lightnings_noise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No `TPU available: False` / `HPU available` lines, no summary table ending in
    `Total Flops 0`: the network's size is one line."""
    import logging

    from pipeline.console import quiet_libraries

    quiet_libraries()
    recipe = with_settings(DEFAULT, {**SETTINGS, "max_epochs": 1, "augment": "none"})
    runtime = RuntimeConfig(accelerator="cpu", num_workers=0, checkpoint_dir=str(tmp_path))
    # Lightning's lines straight from its logger: `lightning.pytorch` stops propagating to the
    # root logger (caplog's) when it is imported before the root has a handler; and at INFO,
    # whatever an earlier test in this worker (the benchmarks quiet it) left it at.
    lightning = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    lightning.addHandler(caplog.handler)
    try:
        with (
            caplog.at_level(logging.INFO),
            caplog.at_level(logging.INFO, logger="lightning.pytorch"),
            mlflow.start_run() as run,
            warnings.catch_warnings(),
        ):
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            fit(recipe, runtime, write_cache(tmp_path), run.info.run_id, seed=0, grid_every=5)
    finally:
        lightning.removeHandler(caplog.handler)
    said = caplog.text
    assert re.search(r"train: a U-Net of [\d,]+ parameters", said), said[-2000:]
    assert "GPU available" in said  # Lightning's own lines still come, less the noise
    for noise in ("TPU available", "HPU available", "Total Flops", "Trainable params"):
        assert noise not in said, noise
