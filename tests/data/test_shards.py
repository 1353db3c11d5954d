"""preprocess --output_format shards: LitData shards in a folder or on S3 (moto in server mode,
real HTTP and boto3) hold the arrays' samples to the byte, under the same fingerprint; what
cannot be read is one line naming the URI, before the first batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from data_helpers import make_dataset

from pipeline.data.cache import (
    SPLITS,
    finished_record,
    open_split,
    processed_input,
    read_cache_record,
    read_manifest_text,
)
from pipeline.data.datamodule import PersonDataModule
from pipeline.data.preprocess import preprocess
from pipeline.data.shard_writer import preprocess_to_shards
from pipeline.data.shards import OUTAGE_VARIABLE, outage_seconds
from pipeline.errors import PipelineError
from pipeline.orchestration.project import project_dir
from pipeline.params import PreprocessParams
from tests.conftest import free_port, isolated_environment
from tests.s3 import S3_CREDENTIALS, lower, moto_bucket

SIZE = 24
SETTINGS = {"image_size": SIZE, "val_fraction": 0.2, "test_fraction": 0.2, "seed": 3}
BUCKET = "datasets"


@pytest.fixture(scope="module")
def s3():
    """(endpoint, boto3 client) of a moto S3 API, its address and credentials in the
    environment as the stack sets them."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in S3_CREDENTIALS.items():
            patch.setenv(name, value)
        for endpoint, _ in moto_bucket(BUCKET):
            patch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
            yield endpoint, boto3.client("s3", endpoint_url=endpoint, **lower(S3_CREDENTIALS))


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """31 pairs, one of them a corrupt image: a bad row both formats must report alike."""
    index = make_dataset(tmp_path_factory.mktemp("raw"), 31)
    (index.parent / "images" / "p005.png").write_bytes(b"not a picture")
    return index.parent


@pytest.fixture(scope="module")
def arrays(raw: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("arrays") / "processed"
    return folder, preprocess(raw, folder, num_workers=1, **SETTINGS)


def _same_samples(expected: Path, actual: str | Path) -> None:
    for split in SPLITS:
        (images, masks), (shard_images, shard_masks) = (
            open_split(expected, split),
            open_split(actual, split),
        )
        assert len(shard_images) == len(images) > 0
        assert np.array_equal(shard_images[:], np.asarray(images)), split
        assert np.array_equal(shard_masks[:], np.asarray(masks)), split


def test_folder_shards_hold_the_arrays_samples_under_their_fingerprint(raw, arrays, tmp_path):
    folder, expected = arrays
    report = preprocess_to_shards(raw, str(tmp_path / "shards"), num_workers=2, **SETTINGS)
    assert report.digest == expected.digest
    assert report.bad_rows == expected.bad_rows
    assert [row for row, *_ in report.bad_rows] == [5]
    assert report.splits == expected.splits
    _same_samples(folder, tmp_path / "shards")
    assert read_manifest_text(tmp_path / "shards") == read_manifest_text(folder)
    record = read_cache_record(tmp_path / "shards")
    assert record["format"] == "shards"
    assert record["splits"] == {name: split.rows for name, split in expected.splits.items()}
    # Published whole: the splits, the manifest and the record, and no staging folder beside.
    assert sorted(path.name for path in (tmp_path / "shards").iterdir()) == [
        ".unet-person.json",
        "manifest.csv",
        *sorted(SPLITS),
    ]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_s3_shards_hold_the_arrays_samples_and_stream_through_the_data_module(raw, arrays, s3):
    folder, expected = arrays
    uri = f"s3://{BUCKET}/person/{SIZE}"
    report = preprocess_to_shards(raw, uri, num_workers=2, **SETTINGS)
    assert report.digest == expected.digest
    _same_samples(folder, uri)
    keys = {item["Key"] for item in s3[1].list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert {f"person/{SIZE}/.unet-person.json", f"person/{SIZE}/manifest.csv"} <= keys
    assert {f"person/{SIZE}/{split}/index.json" for split in SPLITS} <= keys
    assert processed_input(uri + "/", "data_dir") == uri  # streamed where it is, not fetched

    module = PersonDataModule(uri, batch_size=4, num_workers=0, pin_memory=False, seed=1)
    module.setup("fit")
    train_images = np.asarray(open_split(folder, "train")[0])
    for _epoch in range(2):
        seen = torch.cat([images for images, _ in module.train_dataloader()])
        # Every training image once an epoch, in an order of its own.
        assert len(seen) == len(train_images)
        assert sorted(map(bytes, seen.permute(0, 2, 3, 1).numpy())) == sorted(
            map(bytes, train_images)
        )
    val = torch.cat([masks for _, masks in module.val_dataloader()])
    assert np.array_equal(val.squeeze(1).numpy(), np.asarray(open_split(folder, "val")[1]))


def test_params_refuse_arrays_on_s3_and_unknown_formats():
    with pytest.raises(PipelineError, match="add --output_format shards"):
        PreprocessParams(output_dir="s3://bucket/processed")
    with pytest.raises(PipelineError, match="output_format='parquet' is not one of"):
        PreprocessParams(output_format="parquet")


@pytest.mark.parametrize("value", ["soon", "-1", "86400"])
def test_an_outage_budget_that_is_not_seconds_is_refused(value, monkeypatch):
    monkeypatch.setenv(OUTAGE_VARIABLE, value)
    with pytest.raises(PipelineError, match=f"{OUTAGE_VARIABLE}='{value}' is not a number"):
        outage_seconds()


@pytest.mark.parametrize(
    ("uri", "environment", "message"),
    [
        ("s3://no-such-bucket/x", {}, "the bucket does not exist"),
        ("s3://datasets/x", {"MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach"),
    ],
)
def test_unusable_s3_outputs_are_one_line_before_any_work(
    raw, s3, monkeypatch, uri, environment, message
):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    with pytest.raises(PipelineError, match=message) as raised:
        preprocess_to_shards(raw, uri, num_workers=1, **SETTINGS)
    assert uri in str(raised.value) and "\n" not in str(raised.value)
    assert time.monotonic() - started < 60


def test_a_prefix_without_shards_is_no_data(s3):
    with pytest.raises(PipelineError, match="is not a finished preprocess output"):
        read_cache_record(f"s3://{BUCKET}/nothing/here")


@pytest.fixture
def shards(raw, tmp_path) -> Path:
    preprocess_to_shards(raw, str(tmp_path / "shards"), num_workers=1, **SETTINGS)
    return tmp_path / "shards"


def test_a_truncated_chunk_is_one_line_before_the_first_batch(shards):
    chunk = sorted((shards / "train").glob("chunk-*.bin"))[0]
    chunk.write_bytes(chunk.read_bytes()[:-100])
    with pytest.raises(PipelineError, match=r"chunk chunk-0-0\.bin is \d+ bytes, but index"):
        read_cache_record(shards)


def test_a_missing_chunk_or_a_rewritten_index_is_one_line(shards):
    index = shards / "val" / "index.json"
    content = json.loads(index.read_text())
    content["chunks"][0]["chunk_size"] += 1  # an index that another preprocess rewrote
    index.write_text(json.dumps(content))
    with pytest.raises(PipelineError, match="samples, but preprocess recorded"):
        read_cache_record(shards)
    next((shards / "test").glob("chunk-*.bin")).unlink()
    with pytest.raises(PipelineError, match="is missing"):
        read_cache_record(shards)


def test_a_failed_preprocess_leaves_no_finished_output_on_s3(raw, s3, monkeypatch):
    """The record goes first and comes back last: a preprocess that dies between leaves a
    prefix that no step takes for finished, even where a finished one was before."""
    from pipeline.data import shard_writer

    uri = f"s3://{BUCKET}/rewritten"
    preprocess_to_shards(raw, uri, num_workers=1, **SETTINGS)
    assert finished_record(uri) is not None
    real_write = shard_writer.write_split

    def dies_at_val(sample, tasks, root, split, workers):
        if split == "val":
            raise OSError("the disk of LitData's chunk folder is full")
        real_write(sample, tasks, root, split, workers)

    monkeypatch.setattr(shard_writer, "write_split", dies_at_val)
    with pytest.raises(PipelineError, match="writing the val shards failed"):
        preprocess_to_shards(raw, uri, num_workers=1, **SETTINGS)
    assert finished_record(uri) is None
    with pytest.raises(PipelineError, match="is not a finished preprocess output"):
        read_cache_record(uri)


def test_two_preprocess_runs_into_one_prefix_at_once_both_finish_it_whole(
    raw, arrays, s3, tmp_path
):
    """LitData's overwrite deletes a prefix's chunks first: two writers at once would each
    remove what the other wrote before its record; on one machine the second waits instead."""
    uri = f"s3://{BUCKET}/together"
    command = [
        sys.executable, "-m", "pipeline", "preprocess", "--raw_dir", str(raw),
        "--output_dir", uri, "--output_format", "shards", "--num_workers", "2",
        "--log_data", "false", *(f"--{name}={value}" for name, value in SETTINGS.items()),
    ]  # fmt: skip
    env = isolated_environment(tmp_path)
    started = [
        subprocess.Popen(
            command, cwd=project_dir(), env={**os.environ, **env}, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for process in started:
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, errors
    assert read_cache_record(uri)["digest"] == arrays[1].digest
    _same_samples(arrays[0], uri)


def test_a_batch_of_images_then_its_masks_decode_each_sample_once(shards, monkeypatch):
    from pipeline.data.shards import ShardSplit

    decoded = []
    real_sample = ShardSplit.sample
    monkeypatch.setattr(
        ShardSplit, "sample", lambda self, index: decoded.append(index) or real_sample(self, index)
    )
    images, masks = open_split(str(shards), "train")
    assert images[0:5].shape == (5, SIZE, SIZE, 3)
    assert masks[0:5].shape == (5, SIZE, SIZE)
    assert decoded == [0, 1, 2, 3, 4]


@pytest.fixture
def refusing_s3(monkeypatch):
    """A moto S3 API that checks credentials (its own process: the setting is moto's global),
    and keys it does not know in the environment."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, (
                "moto_server did not start"
            )
            time.sleep(0.1)
    for name, value in {**S3_CREDENTIALS, "AWS_SECRET_ACCESS_KEY": "not-the-key"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    yield
    server.kill()
    server.wait()


def test_wrong_credentials_are_one_line_for_the_writer_and_the_reader(raw, refusing_s3):
    with pytest.raises(PipelineError, match=r"output_dir=s3://datasets/x/?: access denied"):
        preprocess_to_shards(raw, "s3://datasets/x", num_workers=1, **SETTINGS)
    with pytest.raises(
        PipelineError, match="data_dir=s3://datasets/x: the credentials were refused"
    ):
        read_cache_record("s3://datasets/x")
