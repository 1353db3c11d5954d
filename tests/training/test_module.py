"""SegmentationModule trained by a real Lightning Trainer on a tiny cache, and the dataset."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler, SequentialSampler

from pipeline.data.augment import AUGMENTATIONS
from pipeline.data.cache import split_paths
from pipeline.data.datamodule import PREFETCH_BATCHES, PersonDataModule, SplitDataset
from pipeline.errors import PipelineError
from pipeline.model.inputs import to_model_input
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.training.module import SegmentationModule
from pipeline.training.optimization import PLATEAU_FACTOR, OptimizationConfig
from tests.training.caches import COUNTS, SIDE, write_cache

STEPS = 30


def small_module(base_channels: int, depth: int, **optimization) -> SegmentationModule:
    """The module around a small U-Net, with the paper's optimisation but for `optimization`."""
    net = UNet(NetworkConfig(base_channels=base_channels, depth=depth))
    return SegmentationModule(net, optimization=OptimizationConfig(**optimization))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cache(tmp_path_factory.mktemp("cache"))


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def _trainer(**overrides) -> L.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**(options | overrides))


@pytest.fixture(scope="module")
def fitted(cache: Path) -> tuple[L.Trainer, SegmentationModule, LossRecorder]:
    """One shared 30-step fit: Trainer start-up dominates, so the checks share it."""
    L.seed_everything(0, verbose=False)
    module = small_module(4, 1, lr=1e-2)
    datamodule = PersonDataModule(cache, batch_size=4, num_workers=0, pin_memory=False)
    recorder = LossRecorder()
    trainer = _trainer(max_steps=STEPS, callbacks=[recorder])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, datamodule=datamodule)
    return trainer, module, recorder


def test_loss_decreases_on_an_easy_pattern(fitted) -> None:
    trainer, _, recorder = fitted
    assert trainer.global_step == STEPS
    assert len(recorder.losses) == STEPS
    assert all(np.isfinite(recorder.losses))
    first, last = np.mean(recorder.losses[:5]), np.mean(recorder.losses[-5:])
    assert last < 0.5 * first


def test_logged_metric_names(fitted) -> None:
    trainer, _, _ = fitted
    names = set(trainer.callback_metrics)
    assert {"train_loss_step", "train_loss_epoch", "train_dice", "val_loss", "val_dice"} <= names
    assert "train_loss_step" in trainer.logged_metrics
    for name in ("train_loss_epoch", "train_dice", "val_loss", "val_dice"):
        assert torch.isfinite(trainer.callback_metrics[name]), name
    # The easy pattern is learnt: validation Dice well above an all-background 0.
    assert 0.5 < float(trainer.callback_metrics["val_dice"]) <= 1.0


def test_trainer_uses_the_plateau_scheduler_on_val_loss(fitted) -> None:
    trainer, _, _ = fitted
    assert len(trainer.optimizers) == 1
    assert isinstance(trainer.optimizers[0], torch.optim.Adam)
    (config,) = trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert config.monitor == "val_loss"
    assert config.name == "lr"
    assert config.interval == "epoch"


def test_configure_optimizers() -> None:
    module = small_module(2, 1, lr=3e-3, plateau_patience=7)
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"]
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 3e-3
    parameters = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert parameters == {id(p) for p in module.parameters()}
    scheduler_config = configured["lr_scheduler"]
    assert scheduler_config["monitor"] == "val_loss"
    assert scheduler_config["name"] == "lr"
    scheduler = scheduler_config["scheduler"]
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert scheduler.optimizer is optimizer
    assert scheduler.mode == "min"
    assert (scheduler.factor, scheduler.patience) == (PLATEAU_FACTOR, 7)


def test_module_builds_the_requested_unet_and_keeps_hparams() -> None:
    module = small_module(2, 3, lr=1e-3)
    assert (module.net.config.base_channels, module.net.config.depth) == (2, 3)
    assert module.hparams.optimization["lr"] == 1e-3
    assert module.hparams.network == module.net.config.to_dict()
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert module(to_model_input(images)).shape == (2, 1, 8, 8)


def test_to_model_input_scales_uint8_to_unit_floats() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 3, 1, 1)
    scaled = to_model_input(images)
    assert scaled.dtype == torch.float32
    assert scaled.flatten().tolist() == pytest.approx([0.0, 0.2, 1.0])
    assert images.flatten().tolist() == [0, 51, 255]  # the uint8 batch is left alone


def test_split_dataset_items(cache: Path) -> None:
    images = np.load(split_paths(cache, "val")[0])
    masks = np.load(split_paths(cache, "val")[1])
    dataset = SplitDataset(cache, "val")
    assert len(dataset) == COUNTS["val"]
    image, mask = dataset[2]
    assert image.dtype == torch.uint8
    assert mask.dtype == torch.uint8
    assert image.shape == (3, SIDE, SIDE)
    assert mask.shape == (1, SIDE, SIDE)
    np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), images[2])
    np.testing.assert_array_equal(mask[0].numpy(), masks[2])
    assert set(np.unique(mask.numpy())) == {0, 1}


def test_split_dataset_pickles_without_its_memory_map(cache: Path) -> None:
    dataset = SplitDataset(cache, "train")
    assert dataset._arrays is None  # opened lazily
    expected = dataset[1]
    assert dataset._arrays is not None
    assert isinstance(dataset._arrays[0], np.memmap)
    payload = pickle.dumps(dataset)
    restored = pickle.loads(payload)
    assert restored._arrays is None
    assert dataset._arrays is not None  # pickling leaves the original open
    assert len(payload) < COUNTS["train"] * SIDE * SIDE  # no pixel data travelled
    assert len(restored) == len(dataset)
    image, mask = restored[1]
    assert torch.equal(image, expected[0])
    assert torch.equal(mask, expected[1])


def test_datamodule_loaders(cache: Path) -> None:
    datamodule = PersonDataModule(cache, batch_size=3, num_workers=0, pin_memory=False)
    datamodule.setup("fit")
    assert {split: len(data) for split, data in datamodule.splits.items()} == COUNTS
    train = datamodule.train_dataloader()
    assert isinstance(train.sampler, RandomSampler)
    for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
        assert isinstance(loader.sampler, SequentialSampler)
    images, masks = next(iter(train))
    assert images.dtype == torch.uint8
    assert masks.dtype == torch.uint8
    assert images.shape == (3, 3, SIDE, SIDE)
    assert masks.shape == (3, 1, SIDE, SIDE)
    assert [len(batch[0]) for batch in datamodule.test_dataloader()] == [3, 1]


def test_onecycle_adamw_steps_the_learning_rate_every_batch(cache: Path) -> None:
    L.seed_everything(0, verbose=False)
    module = small_module(2, 1, optimizer="adamw", lr=1e-2, weight_decay=1e-3, schedule="onecycle")
    datamodule = PersonDataModule(cache, batch_size=4, num_workers=0, pin_memory=False)
    trainer = _trainer(max_epochs=3, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, datamodule=datamodule)
    (optimizer,) = trainer.optimizers
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["weight_decay"] == 1e-3
    (config,) = trainer.lr_scheduler_configs
    assert isinstance(config.scheduler, torch.optim.lr_scheduler.LambdaLR)
    assert config.interval == "step"
    assert trainer.global_step == 3 * COUNTS["train"] // 4
    assert config.scheduler.last_epoch == trainer.global_step  # stepped once per batch
    # Annealed from the peak down to a small share of it by the end of the budget.
    assert config.scheduler.base_lrs == [1e-2]
    assert optimizer.param_groups[0]["lr"] < 1e-2 / 10


@pytest.mark.parametrize("epochs", [1, 2])
def test_onecycle_trains_on_a_budget_of_a_few_steps(cache: Path, epochs: int) -> None:
    """Batch 8 gives 1 or 2 steps here; torch's OneCycleLR raised ZeroDivisionError below 10."""
    module = small_module(2, 1, optimizer="adamw", schedule="onecycle")
    datamodule = PersonDataModule(cache, batch_size=8, num_workers=0, pin_memory=False)
    trainer = _trainer(max_epochs=epochs, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == epochs * -(-COUNTS["train"] // 8)


class BatchRecorder(L.Callback):
    def __init__(self) -> None:
        self.batches: dict[str, list] = {"train": [], "val": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches["train"].append(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batches["val"].append(batch)


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_batches_become_floats_and_only_training_ones_are_augmented(
    cache: Path, augment: str
) -> None:
    L.seed_everything(0, verbose=False)
    module = small_module(2, 1)
    datamodule = PersonDataModule(
        cache, batch_size=4, num_workers=0, pin_memory=False, augment=augment
    )
    recorder = BatchRecorder()
    trainer = _trainer(max_epochs=1, callbacks=[recorder], num_sanity_val_steps=0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, datamodule=datamodule)
    raw = {split: SplitDataset(cache, split) for split in ("train", "val")}
    raw_images = {
        split: {bytes(dataset[i][0].numpy()) for i in range(len(dataset))}
        for split, dataset in raw.items()
    }
    for split, batches in recorder.batches.items():
        for images, masks in batches:
            assert images.dtype == torch.float32 and masks.dtype == torch.float32
            assert images.max() <= 1
            seen = {bytes((image * 255).round().to(torch.uint8).numpy()) for image in images}
            untouched = seen <= raw_images[split]
            assert untouched == (split == "val" or augment == "none"), split


def test_loaders_keep_workers_and_batches_ready(cache: Path) -> None:
    datamodule = PersonDataModule(cache, batch_size=2, num_workers=2, pin_memory=True)
    datamodule.setup("fit")
    for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
        assert loader.persistent_workers and loader.pin_memory
        assert loader.prefetch_factor == PREFETCH_BATCHES


def test_distributed_validation_shows_each_image_to_one_rank_once(cache: Path) -> None:
    """Lightning's DistributedSampler would pad 4 images over 3 ranks to 6 by repeating two."""
    seen = []
    for rank in range(3):
        datamodule = PersonDataModule(cache, batch_size=1, num_workers=0, pin_memory=False)
        datamodule.trainer = SimpleNamespace(
            distributed_sampler_kwargs={"num_replicas": 3, "rank": rank}
        )
        datamodule.setup("fit")
        seen += list(datamodule.val_dataloader().sampler)
    assert sorted(seen) == list(range(COUNTS["val"]))
    datamodule.trainer = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 5, "rank": 0})
    with pytest.raises(PipelineError, match="the val split has 4 images, fewer than the 5"):
        datamodule.val_dataloader()
