"""The processed splits as LitData shards, in a folder or under `s3://bucket/prefix`, for data
that outgrows one disk: written by `litdata.optimize`, streamed by `litdata.StreamingDataset`.

A shards location holds one LitData dataset per split (`<location>/<split>/index.json` and its
chunks) and, written last, the same record as the arrays' folder (`.unet-person.json`), so a
preprocess killed half-way leaves nothing that a later step takes for finished. Samples keep the
order of the split's rows, so sample `i` of a split is row `i` of its manifest, as in the arrays.

S3's endpoint and credentials come from the environment as the rest of the stack has them
(MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataset, optimize
from litdata.streaming import downloader as litdata_downloader

from pipeline import folders
from pipeline.data.samples import as_tensors
from pipeline.errors import PipelineError, first_line
from pipeline.locations import (
    S3_SCHEME,
    S3_TIMEOUT_S,
    Bucket,
    Folder,
    location,
    s3_client,
    s3_config,
    s3_endpoint,
    s3_errors,
)
from pipeline.tracking.artifacts import cache_root

INDEX_FILE = "index.json"
# LitData's advice for S3: chunks of tens of MB amortise each request. Small datasets get
# several chunks anyway, since each preprocess worker writes its own.
CHUNK_BYTES = "64MB"
# The local cache of reads by index (evaluate, the prediction grid, the model's example): they
# go through a split's chunks in turn, so room for a few of them is enough. Training's loaders
# take the cache_size setting instead.
READ_CACHE_SIZE = "2GB"
# Decoded samples ShardColumn keeps: a batch of evaluate's (33 MB at 256 px).
RECENT_SAMPLES = 128


# How long a chunk's download rides out an S3 outage (retries with backoff) before the step
# fails, resumable from its last checkpoint. Read by every process that streams.
OUTAGE_VARIABLE = "UNET_PERSON_S3_OUTAGE_S"
DEFAULT_OUTAGE_S = 120.0


def outage_seconds() -> float:
    text = os.environ.get(OUTAGE_VARIABLE, str(DEFAULT_OUTAGE_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= 3600:
        raise PipelineError(
            f"{OUTAGE_VARIABLE}={text!r} is not a number of seconds from 0 to 3600 (how long a "
            "streaming read retries through an S3 outage); unset it for the default 120"
        )
    return seconds


class _BoundedS3Downloader(litdata_downloader.S3Downloader):
    """LitData's S3 downloader with plain http and a bounded outage.

    LitData 0.2.76 moves every S3 chunk through obstore and hands it client options without
    `allow_http`, so any `http://` endpoint (MinIO in compose) fails with "HTTP error: builder
    error" (obstore issue 159: explicit client options drop the environment's AWS_ALLOW_HTTP);
    and obstore's default retries give up on a refused connection within two seconds. This
    builds the same store (endpoint, region, path-style addressing, LitData's credentials) with
    `allow_http` for http endpoints, bounded timeouts, and retries for `outage_seconds()`.
    """

    def _get_store(self, bucket: str) -> Any:
        from obstore.store import S3Store

        client = self._client.client
        endpoint = client.meta.endpoint_url or ""
        config: dict[str, Any] = {"region": client.meta.region_name or "us-east-1"}
        if endpoint:
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = "amazonaws.com" in endpoint

        def bounded_store() -> Any:
            return S3Store(
                bucket,
                config=config,
                credential_provider=litdata_downloader._obstore_credential_provider(self._client),
                client_options={
                    "allow_http": endpoint.startswith("http://"),
                    "connect_timeout": f"{S3_TIMEOUT_S}s",
                    "timeout": f"{S3_TIMEOUT_S * 6}s",
                },
                retry_config={
                    "max_retries": 1000,  # retry_timeout is the bound
                    "backoff": {
                        "init_backoff": timedelta(seconds=0.5),
                        "max_backoff": timedelta(seconds=10),
                        "base": 2,
                    },
                    "retry_timeout": timedelta(seconds=outage_seconds()),
                },
            )

        return litdata_downloader._cached_obstore_store(self, bounded_store)


# At import: every process that unpickles this module's functions or datasets (LitData's
# workers, DataLoader workers) registers it before it touches S3.
litdata_downloader.register_downloader(S3_SCHEME, _BoundedS3Downloader, overwrite=True)


def storage_options(root: str) -> dict[str, Any]:
    """LitData's boto3 options for `root` (none for a folder): the stack's endpoint, and the
    bounded waits of the pipeline's own clients (LitData's default is a thousand adaptive
    retries, which turns an unreachable endpoint into a hang)."""
    if not root.startswith(S3_SCHEME):
        return {}
    options: dict[str, Any] = {"config": s3_config()}
    endpoint = s3_endpoint()
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


def split_uri(root: str, split: str) -> str:
    return f"{root.rstrip('/')}/{split}"


def write_split(
    sample: Callable[[Any], dict | None], tasks: Sequence[Any], root: str, split: str, workers: int
) -> None:
    """Shard one split: `sample(task)` runs in `workers` processes, in order; None is left out."""
    optimize(
        fn=sample,
        inputs=list(tasks),
        output_dir=split_uri(root, split),
        chunk_bytes=CHUNK_BYTES,
        num_workers=workers,
        # Each worker takes a fixed slice in order, so sample i is the split's i-th good row.
        keep_data_ordered=True,
        reorder_files=False,
        mode="overwrite",
        # Forked, so its uploader processes inherit the plain-http downloader registered above
        # (spawned ones import LitData alone). No CUDA and no obstore run in the parent here.
        start_method="fork",
        storage_options=storage_options(root),
        verbose=False,
    )


def verify_split(root: str, split: str, expected: int | None = None) -> int:
    """The number of samples in a split, once every chunk its index names is there, whole.

    LitData's optimize logs a failed upload and carries on, and a reader would find the hole
    only at that chunk: this finds it first, in one listing, and says so in one line.
    """
    uri = split_uri(root, split)
    place = location(uri)
    if isinstance(place, Folder) and not place.root.is_dir():
        raise PipelineError(f"data_dir={root}: no {split} split there: run preprocess again")
    with s3_errors("data_dir", uri):
        try:
            index = json.loads(place.read(INDEX_FILE))
        except (OSError, ValueError) as error:
            raise PipelineError(
                f"data_dir={root}: the {split} split has no readable {INDEX_FILE} "
                f"({first_line(error)}): run preprocess with output_format=shards to it again"
            ) from None
        sizes = {listed.name: listed.size for listed in place.listing("data_dir")}
    for chunk in index["chunks"]:
        found = sizes.get(chunk["filename"])
        if found != chunk["chunk_bytes"]:
            state = "missing" if found is None else f"{found} bytes"
            raise PipelineError(
                f"data_dir={uri}: chunk {chunk['filename']} is {state}, but {INDEX_FILE} says "
                f"{chunk['chunk_bytes']} bytes: the shards are incomplete or damaged; run "
                "preprocess again"
            )
    samples = sum(chunk["chunk_size"] for chunk in index["chunks"])
    if expected is not None and samples != expected:
        raise PipelineError(
            f"data_dir={uri}: {samples} samples, but preprocess recorded {expected}: the shards "
            "were rewritten by another preprocess; run preprocess again"
        )
    return samples


# The record: the same JSON as folders' marker, kept beside the splits.


def read_record(root: str) -> dict | None:
    """The record a finished preprocess left at `root`, or None."""
    place = location(root)
    if isinstance(place, Folder):
        return folders.read_marker(place.root)
    from botocore.exceptions import ClientError

    try:
        with s3_errors("data_dir", root):
            try:
                return json.loads(place.read(folders.MARKER_FILE))
            except OSError as error:
                if isinstance(error.__cause__, ClientError) and _missing(error.__cause__):
                    return None
                raise error.__cause__ or error from None
    except json.JSONDecodeError:
        return None


def _missing(error: Any) -> bool:
    return error.response.get("Error", {}).get("Code", "") in ("NoSuchKey", "404")


def write_record(root: str, record: dict) -> None:
    place = location(root)
    if isinstance(place, Folder):
        folders.write_marker(place.root, record)
        return
    with s3_errors("output_dir", root):
        place.write(folders.MARKER_FILE, json.dumps(record, indent=2, sort_keys=True).encode())


def forget_record(root: str) -> None:
    """Remove the record first, so that from now until the new one, nothing here is finished."""
    place = location(root)
    with s3_errors("output_dir", root):
        s3_client(place.endpoint).delete_object(
            Bucket=place.bucket, Key=place.prefix + folders.MARKER_FILE
        )


def check_bucket(root: str, role: str) -> Bucket:
    """The bucket of `root`, reachable with these credentials: one line naming `root` if not."""
    place = location(root)
    place.check_writable(role)
    return place


def write_file(root: str, name: str, data: bytes) -> None:
    """A small file beside the splits (the manifest)."""
    place = location(root)
    with s3_errors("output_dir", root):
        place.write(name, data)


def read_file(root: str, name: str) -> bytes:
    place = location(root)
    with s3_errors("data_dir", root):
        return place.read(name)


def read_evenly(folder: str) -> None:
    """Read a folder of shards so that every rank takes the same number of steps.

    LitData 0.2.76 reads a folder on a parallel filesystem (NFS, Lustre, GPFS, BeeGFS, PanFS,
    Vast, any path naming "vast", or LITDATA_POSIX_FAST=1) in place, handing whole chunks to
    loader workers: the ranks of a DDP fit then took 6 and 0 steps (tests/training/
    test_ddp_shards.py), and one waits forever for the other. Such a folder is read through the
    local cache instead, as S3 is (LITDATA_POSIX_FAST=0, which the loader's workers inherit).
    """
    from litdata.streaming.posix_fast import detect_posix_fast

    profile = detect_posix_fast(folder)
    if profile is not None and profile.window_shuffle:
        os.environ["LITDATA_POSIX_FAST"] = "0"


class ShardSplit(StreamingDataset):
    """One split as (image 3xHxW uint8, mask 1xHxW uint8) tensors, as the arrays' SplitDataset
    gives them, streamed with a local cache of at most `cache_size`."""

    def __init__(
        self,
        root: str,
        split: str,
        cache_dir: Path,
        cache_size: str = READ_CACHE_SIZE,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool | None = None,
    ) -> None:
        self.uri = split_uri(root, split)
        if root.startswith(S3_SCHEME):
            outage_seconds()  # a bad value is one line here, not in a loader's prefetch thread
        else:
            read_evenly(self.uri)
        cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            super().__init__(
                self.uri,
                cache_dir=str(cache_dir),
                shuffle=shuffle,
                seed=seed,
                drop_last=drop_last,
                max_cache_size=cache_size,
                # One sample decoded per sample asked for. LitData's "auto" decodes a window of
                # 63 neighbours each time, most of it thrown away under shuffling: 16x slower
                # than the arrays at 256 px (python -m benchmarks streaming).
                batch_decode=0,
                storage_options=storage_options(root),
            )
        except (FileNotFoundError, ValueError, OSError) as error:
            raise PipelineError(
                f"data_dir={root}: the {split} split cannot be opened as shards "
                f"({first_line(error)}); run preprocess with output_format=shards to it again"
            ) from error

    def sample(self, index: Any) -> dict:
        try:
            return super().__getitem__(index)
        except Exception as error:
            raise self._unreadable(getattr(index, "index", index), error) from error

    def sample_at(self, index: int) -> dict:
        """Sample `index`, decoded once for the two columns that read it in turn (evaluate
        takes a batch of images, then their masks): the last RECENT_SAMPLES are kept."""
        recent = self.__dict__.setdefault("_recent", {})
        if index not in recent:
            if len(recent) >= RECENT_SAMPLES:
                del recent[next(iter(recent))]
            recent[index] = self.sample(index)
        return recent[index]

    def _unreadable(self, index: int, error: Exception) -> PipelineError:
        """An outage (S3 stopped answering for longer than the retries last) or damage (a
        truncated chunk, one that does not match its index), told apart by obstore's error."""
        causes = [error]
        while causes[-1].__cause__ is not None and len(causes) < 8:
            causes.append(causes[-1].__cause__)
        from obstore.exceptions import BaseError, NotFoundError

        if any(
            isinstance(cause, BaseError) and not isinstance(cause, NotFoundError)
            for cause in causes
        ):
            return PipelineError(
                f"data_dir={self.uri}: S3 did not answer for sample {index} within "
                f"{outage_seconds():.0f} s of retries ({first_line(str(causes[-1]), 160)}); "
                "what is done is kept: run the same command again once the endpoint answers, and "
                f"a train resumes from its last checkpoint (set {OUTAGE_VARIABLE} to ride out "
                "longer outages)"
            )
        return PipelineError(
            f"data_dir={self.uri}: sample {index} cannot be read "
            f"({type(error).__name__}: {first_line(str(error), 160)}); the shards are damaged "
            "or were rewritten while read: run preprocess again"
        )

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.sample(index)
        return as_tensors(item["image"], item["mask"])


def stream_cache_dir(root: str, purpose: str) -> Path:
    """A local cache folder per location and use, so two steps never evict each other's chunks."""
    name = hashlib.sha256(f"{root}|{purpose}".encode()).hexdigest()[:20]
    return cache_root() / "streams" / name


class ShardColumn:
    """A split's images or masks by index or slice, as numpy arrays: what a memory-mapped
    array gives evaluate, the prediction grid and the logged model's example."""

    def __init__(self, split: ShardSplit, key: str) -> None:
        self.split = split
        self.key = key

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):
            return np.stack([self[i] for i in range(*index.indices(len(self)))])
        if np.ndim(index):
            return np.stack([self[int(i)] for i in np.asarray(index)])
        return np.asarray(self.split.sample_at(int(index))[self.key])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self[0].shape)
