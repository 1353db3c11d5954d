"""Lightning data module over the preprocessed cache: memory-mapped uint8, no decoding; or the
same splits streamed from LitData shards (a folder or s3://) through LitData's loader, which
shards each epoch across ranks and workers and keeps its place for a mid-epoch resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from pipeline.data.augment import NONE, augmentation
from pipeline.data.cache import SPLITS, Processed, is_shards, open_split
from pipeline.data.samples import as_tensors
from pipeline.errors import PipelineError
from pipeline.model.inputs import to_model_input

PREFETCH_BATCHES = 4


class SplitDataset(Dataset):
    """One split as (image 3xHxW uint8, mask 1xHxW uint8) tensors.

    The arrays are opened lazily in each worker: a memory map pickled to a worker would be
    copied whole.
    """

    def __init__(self, cache: Path, split: str) -> None:
        self.cache = cache
        self.split = split
        images, _ = open_split(cache, split)
        self.length = len(images)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._arrays is None:
            self._arrays = open_split(self.cache, self.split)
        images, masks = self._arrays
        return as_tensors(images[index], masks[index])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}


class PersonDataModule(L.LightningDataModule):
    """Train, val and test loaders; batches stay uint8 until they reach the device (4x less
    to copy), where they become floats and training batches are augmented at level `augment`
    (pipeline/data/augment.py): on the GPU when there is one, instead of in CPU workers. With
    `channels_last` the images reach the network in NHWC layout, as its weights are then."""

    def __init__(
        self,
        cache: Processed,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        augment: str = NONE,
        channels_last: bool = False,
        seed: int = 0,
        cache_size: str = "10GB",
    ) -> None:
        super().__init__()
        self.cache = cache
        self.streaming = is_shards(cache)
        self.seed = seed  # of the shards' order each epoch, the same on every rank
        self.cache_size = cache_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.augment = augment
        self.channels_last = channels_last
        self.augmentation: Callable | None = None

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, masks = batch
        images, masks = to_model_input(images), masks.float()
        if self.augmentation is not None and self.trainer is not None and self.trainer.training:
            images, masks = self.augmentation(images, masks)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks

    def setup(self, stage: str | None = None) -> None:
        if not self.streaming:  # shards are opened by each loader, once ranks are known
            self.splits = {split: SplitDataset(self.cache, split) for split in SPLITS}
        height, width = open_split(self.cache, "train")[0].shape[1:3]
        self.augmentation = augmentation(self.augment, (height, width))
        if self.augmentation is not None:
            ranks = self._ranks()
            if ranks:
                # Every rank starts from the same seed (the model's weights must agree); each
                # then draws its own flips and crops rather than the same ones as its peers.
                torch.manual_seed(torch.initial_seed() + ranks["rank"])

    def _ranks(self) -> dict[str, int] | None:
        """num_replicas and rank of a distributed fit, None in a single process."""
        kwargs = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        return kwargs if kwargs and kwargs["num_replicas"] > 1 else None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if self.streaming:
            return self._streaming_loader(split, shuffle)
        dataset = self.splits[split]
        ranks = self._ranks()
        sampler = None
        if ranks and not shuffle:
            # Lightning's DistributedSampler would pad the split to a multiple of the ranks by
            # repeating images, and pooled Dice would count them twice: each rank takes every
            # num_replicas-th image instead, some ranks one fewer.
            if len(dataset) < ranks["num_replicas"]:
                raise PipelineError(
                    f"the {split} split has {len(dataset)} images, fewer than the "
                    f"{ranks['num_replicas']} processes of this fit, and each needs one"
                )
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False, **ranks)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # Batches each worker keeps ready (torch's default is 2): a GPU step takes less time
            # than a cold read from network storage, so more of them ride such reads out.
            prefetch_factor=PREFETCH_BATCHES if self.num_workers > 0 else None,
        )

    def _streaming_loader(self, split: str, shuffle: bool) -> DataLoader:
        from litdata import StreamingDataLoader

        from pipeline.data.shards import ShardSplit, stream_cache_dir

        root = str(self.cache)
        dataset = ShardSplit(
            root,
            split,
            stream_cache_dir(root, split),
            self.cache_size,
            shuffle=shuffle,
            seed=self.seed,
            # Training ranks must take the same number of steps (their gradients meet each
            # step), so LitData leaves out the last few samples of an epoch that do not fill
            # one batch on every rank; a different few each epoch, as the order changes.
            # Validation counts every image once, on whichever rank it lands.
            drop_last=None if shuffle else False,
        )
        return StreamingDataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            prefetch_factor=PREFETCH_BATCHES if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
