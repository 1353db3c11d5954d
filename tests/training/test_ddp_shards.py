"""DDP over shards (two CPU processes, gloo): LitData gives each rank a disjoint part of each
epoch's training images, the same number of batches on every rank, and leaves out fewer than
ranks x batch of them (a different few each epoch); validation sees every image exactly once,
so the pooled val Dice that `train --devices 2` logs is the single-process one."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing

from pipeline.data.datamodule import PersonDataModule
from pipeline.data.preprocess import preprocess
from pipeline.data.shard_writer import preprocess_to_shards
from tests.conftest import free_port
from tests.data.data_helpers import make_dataset
from tests.training.test_ddp import (
    finish,
    single_process_dice,
    start,
    the_one_run,
    train_arguments,
)

pytestmark = pytest.mark.e2e

RANKS = 2
BATCH = 3
SETTINGS = {"image_size": 32, "val_fraction": 0.17, "test_fraction": 0.1, "seed": 2}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("raw"), 30).parent


@pytest.fixture(scope="module")
def shards(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    output = str(tmp_path_factory.mktemp("shards") / "shards")
    report = preprocess_to_shards(raw, output, **SETTINGS)
    assert (report.splits["train"].rows, report.splits["val"].rows) == (22, 5)
    return output


def digests(masks: torch.Tensor) -> list[str]:
    return [hashlib.sha256(mask.numpy().tobytes()).hexdigest() for mask in masks]


def rank_batches(rank: int, port: int, shards: str, found: Path) -> None:
    """One rank: two training epochs and one validation, each batch as its masks' digests."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=RANKS)
    datamodule = PersonDataModule(shards, BATCH, num_workers=2, pin_memory=False, seed=7)
    datamodule.setup("fit")
    train = datamodule.train_dataloader()
    epochs = [[digests(masks) for _, masks in train] for _ in range(2)]
    val = [digests(masks) for _, masks in datamodule.val_dataloader()]
    (found / f"{rank}.json").write_text(json.dumps({"epochs": epochs, "val": val}))
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="gloo on loopback")
# "1": what LitData does by itself for a folder on NFS, Lustre, GPFS and the like (in-place
# reads, whole chunks a loader worker): the ranks' steps differed, one rank took none.
@pytest.mark.parametrize("posix_fast", [None, "1"])
def test_ranks_take_disjoint_equal_parts_of_each_epoch_and_all_of_val(
    shards, tmp_path, posix_fast, monkeypatch
) -> None:
    if posix_fast:
        monkeypatch.setenv("LITDATA_POSIX_FAST", posix_fast)
    torch.multiprocessing.start_processes(
        rank_batches, args=(free_port(), shards, tmp_path), nprocs=RANKS, start_method="spawn"
    )
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(RANKS)]
    orders = []
    for epoch in range(2):
        batches = [rank["epochs"][epoch] for rank in ranks]
        # 11 images a rank make 3 whole batches: equal steps, as the ranks' gradients meet.
        assert [len(each) for each in batches] == [3, 3]
        seen = [digest for each in batches for batch in each for digest in batch]
        assert len(seen) == len(set(seen)) == 18  # disjoint; 4 < RANKS * BATCH left out
        orders.append(seen)
    assert orders[0] != orders[1]
    assert len(set(orders[0]) | set(orders[1])) > 18  # not the same four left out
    val = [digest for rank in ranks for batch in rank["val"] for digest in batch]
    assert len(val) == len(set(val)) == 5  # every val image once, none repeated as padding


def test_lightning_ranks_over_shards_log_the_exact_pooled_val_dice(raw, shards, tmp_path) -> None:
    arrays = tmp_path / "arrays"
    preprocess(raw, arrays, **SETTINGS)  # the same samples, byte for byte, as the shards
    arguments = train_arguments(shards, tmp_path)
    process, log = start(tmp_path, [sys.executable, "-m", "pipeline", *arguments], "train")
    output = finish(process, log)
    assert output.count("epoch 1/") == 1
    run = the_one_run(tmp_path)
    assert run.data.params["data_dir"] == shards
    best_val_dice = run.data.metrics["best_val_dice"]
    assert 0 < best_val_dice < 1
    checkpoint = tmp_path / "checkpoints" / run.info.run_id / "best.ckpt"
    assert single_process_dice(checkpoint, arrays) == pytest.approx(best_val_dice, abs=1e-6)
