"""What streaming shards cost against the memory-mapped arrays: training batches per second from
the arrays, from LitData shards in a folder and from shards on S3 (moto) with the stream cache
cold and then warm; the local disk the stream cache takes against its `cache_size`; and the
peak memory and seconds of preprocess to shards on a small and a 4x larger dataset, with what
those say about a dataset of a million photos (see EXPLANATION).

    python -m benchmarks streaming                    # 2000 photos; preprocess 2000 vs 8000
    python -m benchmarks streaming --images 500 --small 200 --large 800 --cache-size 32MB
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import boto3
import torch
from litdata.utilities.format import _convert_bytes_to_int

from benchmarks.gpu import TARGET as GPU_TARGET
from benchmarks.loader import pipeline_workers
from benchmarks.measure import (
    BIN,
    MB,
    check_repeats,
    descendants,
    experiment_store,
    free_port,
    http_ok,
    load_average,
    median,
    mlflow_environment,
    rss_bytes,
    server,
    taking_turns,
)
from benchmarks.preprocess_memory import REPOSITORY, SAMPLE_S
from benchmarks.report import machine_sections, markdown_table
from benchmarks.workspace import SPLIT_SEED, TEST_FRACTION, VAL_FRACTION
from pipeline.data.datamodule import PersonDataModule
from pipeline.data.shard_writer import preprocess_to_shards
from pipeline.data.shards import INDEX_FILE, read_file, split_uri, stream_cache_dir, verify_split
from pipeline.locations import location
from pipeline.processes import environment
from pipeline.training.runtime import RuntimeConfig

TITLE = "Streaming shards: loader batches/s, stream cache disk, preprocess memory"
TARGET = 1.10
TRAIN_CACHE_SIZE = RuntimeConfig().cache_size  # train's own cache_size default
DISK_SAMPLE_S = 0.02
# Resident-size samples per PSS sample: smaps_rollup costs about 1 ms a process to read.
PSS_EVERY = 10
BUCKET = "streaming"
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# "On paper": a dataset size, core counts and a GPU count to scale the measured figures to
# (choices, not measurements).
PAPER_PHOTOS = 1_000_000
PAPER_CORES = (16, 64, 256)
PAPER_GPUS = 8
EXPLANATION = f"""\
**Loader**: batches per second of `PersonDataModule(...).train_dataloader()` (the pipeline's own
training loader, shuffled, the given batch size and worker count, no pinned memory), iterated to
its end and nothing else done with the batches, over the same generated photos preprocessed
three ways: **arrays**, the memory-mapped `.npy` files `preprocess` writes by default; **shards,
folder**, `--output_format shards` to a local folder (LitData reads its chunks in place); and
**shards on S3** (a moto server in its own process on this machine, reached over HTTP as a
real endpoint would be), streamed with train's default `cache_size` ({TRAIN_CACHE_SIZE}: every
chunk fits) and with a small `--cache-size` below the split's size, so that LitData must evict.
The shards are read one sample decoded per sample drawn (`batch_decode=0`, pipeline/data/
shards.py). LitData 0.2.76's default ("auto") deserializes a window of neighbouring samples (16
MiB of them, 63 at 256 px) for each sample asked for, and the shuffled order mostly asks for
samples outside the window it holds (a profile counted about 18 samples decoded per sample
drawn): measured in one run on 2026-12-08 on this machine, before the pipeline set it, the
folder gave 28.0 batches/s with the default against 313.9 per sample (0.06x and 0.70x of the
arrays), and S3 with a warm cache 26.7.

Each repeat builds a fresh loader per source, the sources taking turns, after emptying its
stream cache folder (`UNET_PERSON_CACHE/streams/...`, pipeline/data/shards.py
`stream_cache_dir`), and times two passes (epochs) over it: the first pass on S3 is the
**cold** cache, the second, with the cache kept, the **warm** one (with the small bound, the
chunks evicted in the first pass are fetched again). Each figure is the median of the repeats,
after one untimed round (imports, the first S3 connection, the page cache); each ratio divides
by the arrays' figure of the same pass. torch's intra-op threads are held at 1 during the
passes, as in a DataLoader worker: the only torch work is the collate's stack, which on 2
cores shared with other jobs otherwise waits on OpenMP threads (seen while writing this
benchmark, other jobs holding the cores: 40 to 100 ms to stack a batch of 16 at 256 px with
two threads, about 1 ms with one). The local rows read from the page cache, and moto's server
shares this machine's cores with the loader: against a real S3, the cold pass is bound by the
network instead.

**Stream cache disk**: the total size of the files under the source's stream cache folder,
sampled every {DISK_SAMPLE_S * 1000:.0f} ms during each pass (a peak between two samples can be
missed); the largest over all passes, against the bound. LitData evicts whole chunks, only once
they are read, and keeps at least two per worker (the one read and one fetched ahead), so with
a bound below two chunks the disk holds about two chunks regardless.

**Preprocess**: `python -m pipeline preprocess --output_format shards` to a local folder (the
entry point, tracking into a SQLite store, `log_data false`), on two generated datasets, the
larger 4 times the smaller, the two sizes taking turns, sampled as the preprocess memory
benchmark samples the arrays' preprocess: every {SAMPLE_S * 1000:.0f} ms the resident size and
`VmHWM` of the command and of every process below it (LitData's workers, one per core for each
split, each with a helper process of its own). **peak** is the sum of each process's own peak;
**sampled peak** the largest sum of resident sizes at one moment; **PSS peak** the largest sum
of proportional set sizes at one moment (every {SAMPLE_S * PSS_EVERY * 1000:.0f} ms), where a
page shared by n processes counts 1/n in each. LitData forks its workers from the command once
torch and MLflow are loaded, so resident sizes count those shared pages once per process: PSS
is the memory the machine actually spends. The ratio is the larger dataset's peak over the
smaller's. Pairs per second per core are the marginal rate (the extra pairs over the extra
seconds of the larger run, so that Python's and MLflow's start cancel) over the worker
processes; the generated photos are 160 to 640 pixels a side, smaller than most real photos,
so real decoding is slower.

**On paper**: a pair at S px is S x S x 3 bytes of photo and S x S of mask, uint8 (262,144
bytes at 256 px), so {PAPER_PHOTOS:,} photos are that many times it as arrays, and as shards
that many times the measured bytes per sample of the shards (LitData's per-item header and
index included). Preprocess time at {", ".join(map(str, PAPER_CORES))} cores is
{PAPER_PHOTOS:,} over the measured pairs/s per core times the cores (decoding is the work, one
photo per worker at a time, so it scales with the cores until storage or the network binds).
The read bandwidth a GPU needs is its training images per second times the bytes of a pair:
the best training figure the GPU benchmark kept in `benchmarks/results` (bf16 where it has
one), or, where no GPU figure is kept, its target of {GPU_TARGET:,.0f} img/s on an H100-class
card (a target, not a measurement); {PAPER_GPUS} GPUs need {PAPER_GPUS} times it, from the
stream cache once warm and from S3 while it is cold.
"""


@dataclass(frozen=True)
class Source:
    """One way the training split is read: `root` as PersonDataModule takes it."""

    key: str
    label: str
    root: Path | str
    cache_size: str | None  # None: not streamed (the arrays)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=2000, help="photos (70%% train)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--workers", type=int, default=pipeline_workers(), help="loader workers (train's choice)"
    )
    parser.add_argument(
        "--cache-size", default="64MB", help="the small stream cache bound, below the split"
    )
    parser.add_argument("--repeats", type=int, default=5, help="loader rounds (>= 3)")
    parser.add_argument("--small", type=int, default=2000, help="pairs, smaller preprocess")
    parser.add_argument("--large", type=int, default=8000, help="pairs, larger preprocess")
    parser.add_argument(
        "--preprocess-repeats", type=int, default=3, help="preprocess runs per size (>= 3)"
    )
    parser.add_argument(
        "--preprocess-workers", type=int, default=0, help="preprocess's num_workers (0: per core)"
    )


@contextmanager
def moto_s3(folder: Path) -> Iterator[str]:
    """A moto S3 server in a process of its own (not this one's GIL) holding an empty BUCKET,
    its endpoint and keys in the environment: yields the endpoint."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    argv = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    with (
        server(argv, dict(os.environ), folder / "moto.log", http_ok(endpoint)),
        environment({**S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": endpoint}),
    ):
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint


def folder_bytes(folder: Path) -> int:
    """The total size of the files under `folder`, 0 where there is none; files LitData
    removes while this walks count as gone."""
    total = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            with suppress(FileNotFoundError):
                total += os.path.getsize(os.path.join(parent, name))
    return total


class DiskPeak:
    """The largest size of `folder` while the block runs, sampled by a thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.peak = 0
        self.running = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while self.running.is_set():
            self.peak = max(self.peak, folder_bytes(self.folder))
            time.sleep(DISK_SAMPLE_S)

    def __enter__(self) -> DiskPeak:
        self.running.set()
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.running.clear()
        self.thread.join()
        self.peak = max(self.peak, folder_bytes(self.folder))


def timed_pass(loader: torch.utils.data.DataLoader, cache: Path) -> dict[str, float]:
    """One epoch of `loader` to its end: batches and images a second, the cache's peak bytes."""
    batches = images = 0
    with DiskPeak(cache) as disk:
        started = time.perf_counter()
        for batch_images, _ in loader:
            batches += 1
            images += len(batch_images)
        seconds = time.perf_counter() - started
    return {
        "batches_per_s": batches / seconds,
        "images_per_s": images / seconds,
        "batches": batches,
        "cache_peak_bytes": disk.peak,
    }


def two_passes(source: Source, options: argparse.Namespace, seed: int) -> list[dict]:
    """A fresh loader over `source`, its stream cache emptied first, timed over two epochs."""
    cache = stream_cache_dir(str(source.root), "train")
    shutil.rmtree(cache, ignore_errors=True)
    module = PersonDataModule(
        source.root,
        options.batch_size,
        options.workers,
        pin_memory=False,
        seed=seed,
        cache_size=source.cache_size or TRAIN_CACHE_SIZE,
    )
    module.setup("fit")
    loader = module.train_dataloader()
    return [timed_pass(loader, cache) for _ in range(2)]


def measure_loaders(sources: list[Source], options: argparse.Namespace) -> dict[str, dict]:
    """Each source's first and second pass, round after round, the sources taking turns."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    passes: dict[str, list[list[dict]]] = {source.key: [] for source in sources}
    try:
        for round_index in range(options.repeats + 1):  # the first round is untimed
            for source in sources:
                measured = two_passes(source, options, seed=round_index)
                if round_index:
                    passes[source.key].append(measured)
    finally:
        torch.set_num_threads(threads)
    figures = {}
    for source in sources:
        rounds = passes[source.key]
        by_pass = {
            name: [measured[index] for measured in rounds]
            for index, name in enumerate(("first", "second"))
        }
        figures[source.key] = {
            "label": source.label,
            "cache_size": source.cache_size,
            "batches": rounds[0][0]["batches"],
            **{
                f"{name}_pass_{unit}": median([one[unit] for one in measured], 1)
                for name, measured in by_pass.items()
                for unit in ("batches_per_s", "images_per_s")
            },
            "repeats_batches_per_s": {
                name: [round(one["batches_per_s"], 2) for one in measured]
                for name, measured in by_pass.items()
            },
            "cache_peak_bytes": max(one["cache_peak_bytes"] for pair in rounds for one in pair),
        }
        if source.cache_size:
            bound = _convert_bytes_to_int(source.cache_size)  # as LitData reads it
            figures[source.key]["cache_bound_bytes"] = bound
            figures[source.key]["within_bound"] = figures[source.key]["cache_peak_bytes"] <= bound
    arrays = figures["arrays"]
    for measured in figures.values():
        for name in ("first", "second"):
            key = f"{name}_pass_batches_per_s"
            measured[f"{name}_pass_vs_arrays"] = round(measured[key] / arrays[key], 3)
    return figures


def split_on_storage(root: str) -> dict:
    """The training split as shards: samples, bytes (chunks and index), chunks, largest chunk."""
    uri = split_uri(root, "train")
    samples = verify_split(root, "train")
    chunks = json.loads(read_file(uri, INDEX_FILE))["chunks"]
    stored = sum(listed.size for listed in location(uri).listing("data_dir"))
    return {
        "samples": samples,
        "bytes": stored,
        "bytes_per_sample": round(stored / samples),
        "chunks": len(chunks),
        "largest_chunk_bytes": max(chunk["chunk_bytes"] for chunk in chunks),
    }


def pss_bytes(pid: int) -> int:
    """A process's proportional set size (each shared page split among its sharers); 0 once
    it is gone."""
    with suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def watch_preprocess(argv: list[str], env: dict[str, str], log: Path) -> dict[str, float]:
    """preprocess_memory's `watch` of one command, plus the largest sum of its processes' PSS:
    LitData forks its workers from the command once torch and MLflow are loaded, and resident
    sizes count the pages they share once in every process."""
    peaks: dict[int, int] = {}
    sampled = proportional = 0
    started = time.perf_counter()
    with log.open("a") as output:
        process = subprocess.Popen(
            argv, env=env, cwd=REPOSITORY, stdout=output, stderr=subprocess.STDOUT
        )
        for sample in itertools.count():
            if process.poll() is not None:
                break
            pids = [process.pid, *descendants(process.pid)]
            now = 0
            for pid in pids:
                peaks[pid] = max(peaks.get(pid, 0), rss_bytes(pid, "VmHWM"))
                now += rss_bytes(pid)
            sampled = max(sampled, now)
            if sample % PSS_EVERY == 0:
                proportional = max(proportional, sum(map(pss_bytes, pids)))
            time.sleep(SAMPLE_S)
    seconds = time.perf_counter() - started
    if process.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{log.read_text()[-3000:]}")
    return {
        "peak_mb": round(sum(peaks.values()) / MB, 1),
        "sampled_peak_mb": round(sampled / MB, 1),
        "pss_peak_mb": round(proportional / MB, 1),
        "processes": len(peaks),
        "seconds": round(seconds, 2),
    }


def preprocess_runs(options: argparse.Namespace) -> dict:
    """Peak memory and seconds of preprocess to shards, the small and large dataset in turn."""
    check_repeats(options.preprocess_repeats)
    folder = options.workspace.folder / "streaming-preprocess"
    folder.mkdir()
    store = experiment_store(folder)
    sizes = {"small": options.small, "large": options.large}
    datasets = {name: options.workspace.raw(rows) for name, rows in sizes.items()}
    order = taking_turns(list(sizes), options.preprocess_repeats)
    runs: dict[str, list[dict]] = {name: [] for name in sizes}
    for name, repeat in order:
        own_store = shutil.copy(store, folder / f"{name}-{repeat}.db")
        output = folder / f"{name}-{repeat}"
        argv = [
            *(sys.executable, "-m", "pipeline", "preprocess", "--output_format", "shards"),
            *("--raw_dir", str(datasets[name]), "--output_dir", str(output)),
            *("--image_size", str(options.image_size), "--log_data", "false"),
            *("--num_workers", str(options.preprocess_workers)),
        ]
        env = mlflow_environment(f"sqlite:///{own_store}")
        runs[name].append(watch_preprocess(argv, env, folder / "log"))
        shutil.rmtree(output)  # gigabytes at the larger size
    figures = {
        name: {
            "pairs": sizes[name],
            **{
                key: median([run[key] for run in runs[name]], 1)
                for key in ("peak_mb", "sampled_peak_mb", "pss_peak_mb", "seconds")
            },
            "processes": max(run["processes"] for run in runs[name]),
        }
        for name in sizes
    }
    small, large = figures["small"], figures["large"]
    ratio = round(large["peak_mb"] / small["peak_mb"], 3)
    workers = options.preprocess_workers or os.cpu_count() or 1
    pairs_per_s = (large["pairs"] - small["pairs"]) / (large["seconds"] - small["seconds"])
    return {
        "ratio": ratio,
        "target": TARGET,
        "met": ratio <= TARGET,
        **figures,
        "workers": workers,
        "pairs_per_s": round(pairs_per_s, 1),
        "pairs_per_s_per_core": round(pairs_per_s / workers, 1),
        "repeats": options.preprocess_repeats,
        "runs": runs,
    }


def gpu_training_rate(results: Path) -> dict:
    """The best training img/s of any kept GPU figure (bf16 where measured), or, with none kept,
    the GPU benchmark's target."""
    best = None
    for path in sorted(results.glob("*.json")):
        gpu = json.loads(path.read_text()).get("gpu")
        if gpu and (best is None or gpu["best"]["images_per_s"] > best["images_per_s"]):
            best = {key: gpu["best"][key] for key in ("images_per_s", "precision", "batch_size")}
            best.update(measured=True, card=gpu["card"], machine=path.stem, date=gpu["date"])
    return best or {"measured": False, "images_per_s": GPU_TARGET}


def gpu_rate_text(gpu: dict) -> str:
    if not gpu["measured"]:
        return "the GPU benchmark's target for an H100-class card, not a measurement"
    return (
        f"measured on {gpu['card']}, {gpu['precision']}, batch {gpu['batch_size']}: "
        f"`{gpu['machine']}`, {gpu['date']}"
    )


def run(options: argparse.Namespace) -> dict:
    check_repeats(options.repeats)
    before = load_average()
    workspace = options.workspace
    folder = workspace.folder / "streaming"
    folder.mkdir()
    settings = (options.image_size, VAL_FRACTION, TEST_FRACTION, SPLIT_SEED)
    raw = workspace.raw(options.images)
    with environment({"UNET_PERSON_CACHE": str(folder / "cache")}), moto_s3(folder):
        shards_folder, shards_s3 = str(folder / "shards"), f"s3://{BUCKET}/person"
        for root in (shards_folder, shards_s3):
            preprocess_to_shards(raw, root, *settings)
        sources = [
            Source("arrays", "arrays", workspace.cache(options.images, options.image_size), None),
            Source("folder", "shards, folder", shards_folder, TRAIN_CACHE_SIZE),
            Source("s3", "shards on S3", shards_s3, TRAIN_CACHE_SIZE),
            Source("s3_bounded", "shards on S3, small cache", shards_s3, options.cache_size),
        ]
        split = split_on_storage(shards_s3)
        loaders = measure_loaders(sources, options)
    arrays, s3 = loaders["arrays"], loaders["s3"]
    figures = {
        "ratios_vs_arrays": {
            "folder": loaders["folder"]["second_pass_vs_arrays"],
            "s3_cold": s3["first_pass_vs_arrays"],
            "s3_warm": s3["second_pass_vs_arrays"],
        },
        "arrays_batches_per_s": arrays["second_pass_batches_per_s"],
        "loaders": loaders,
        "train_split": split,
        "preprocess": preprocess_runs(options),
        "gpu_training": gpu_training_rate(options.results_dir),
        "image_size": options.image_size,
        "batch_size": options.batch_size,
        "workers": options.workers,
        "images": options.images,
        "repeats": options.repeats,
        "load_average": {"before": before, "after": load_average()},
    }
    print(loader_table(figures), disk_table(figures), preprocess_table(figures), sep="\n\n")
    print(f"\n{on_paper(figures)}")
    return figures


def loader_table(figures: dict) -> str:
    header = [
        "source", "cache_size", "pass 1 batches/s", "pass 2 batches/s", "pass 1 img/s",
        "pass 2 img/s", "pass 1 / arrays", "pass 2 / arrays",
    ]  # fmt: skip
    rows = [
        [
            measured["label"],
            measured["cache_size"] or "",
            f"{measured['first_pass_batches_per_s']:.1f}",
            f"{measured['second_pass_batches_per_s']:.1f}",
            f"{measured['first_pass_images_per_s']:.0f}",
            f"{measured['second_pass_images_per_s']:.0f}",
            f"{measured['first_pass_vs_arrays']:.2f}x",
            f"{measured['second_pass_vs_arrays']:.2f}x",
        ]
        for measured in figures["loaders"].values()
    ]
    return markdown_table(header, rows, text_columns=2)


def disk_table(figures: dict) -> str:
    split = figures["train_split"]
    header = ["source", "cache_size", "stream cache at its largest", "within cache_size?"]
    rows = [
        [
            measured["label"],
            measured["cache_size"],
            f"{measured['cache_peak_bytes'] / MB:.1f} MB",
            "yes" if measured["within_bound"] else "**no**",
        ]
        for key, measured in figures["loaders"].items()
        if key != "arrays"
    ]
    rows.append(["(the train split on S3)", "", f"{split['bytes'] / MB:.1f} MB", ""])
    return markdown_table(header, rows, text_columns=2)


def preprocess_table(figures: dict) -> str:
    preprocess = figures["preprocess"]
    header = ["pairs", "peak MB (sum of each process's peak)", "sampled peak MB",
              "sampled PSS peak MB", "processes", "seconds"]  # fmt: skip
    rows = [
        [
            preprocess[name]["pairs"],
            f"{preprocess[name]['peak_mb']:.0f}",
            f"{preprocess[name]['sampled_peak_mb']:.0f}",
            f"{preprocess[name]['pss_peak_mb']:.0f}",
            preprocess[name]["processes"],
            f"{preprocess[name]['seconds']:.1f}",
        ]
        for name in ("small", "large")
    ]
    return markdown_table(header, rows, text_columns=0)


def readable_duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds < 2 * 3600 else f"{seconds / 3600:.1f} h"


def on_paper(figures: dict) -> str:
    """A million photos at this image size, from this run's figures (see EXPLANATION)."""
    side = figures["image_size"]
    pair_bytes = side * side * 4  # uint8 photo (3 channels) and mask (1)
    split, preprocess = figures["train_split"], figures["preprocess"]
    gpu = figures["gpu_training"]
    per_core = preprocess["pairs_per_s_per_core"]
    durations = ", ".join(
        f"{readable_duration(PAPER_PHOTOS / (per_core * cores))} at {cores} cores"
        for cores in PAPER_CORES
    )
    per_gpu = gpu["images_per_s"] * pair_bytes / MB
    cold = figures["loaders"]["s3"]["first_pass_images_per_s"] * split["bytes_per_sample"] / MB
    return (
        f"**On paper** ({PAPER_PHOTOS:,} photos at {side} px): {pair_bytes:,} bytes a pair, "
        f"{PAPER_PHOTOS * pair_bytes / 1e9:,.0f} GB as arrays; as shards "
        f"{split['bytes_per_sample']:,} bytes a sample measured "
        f"({split['bytes_per_sample'] / pair_bytes - 1:+.2%}), "
        f"{PAPER_PHOTOS * split['bytes_per_sample'] / 1e9:,.0f} GB. Preprocess at the measured "
        f"{per_core:.1f} pairs/s per core: {durations}. A GPU training at "
        f"{gpu['images_per_s']:,.0f} img/s ({gpu_rate_text(gpu)}) reads "
        f"{per_gpu:,.0f} MB/s; {PAPER_GPUS} GPUs {PAPER_GPUS * per_gpu:,.0f} MB/s "
        f"({PAPER_GPUS * per_gpu * 8 / 1000:.1f} Gbit/s). The cold S3 pass here moved "
        f"{cold:,.0f} MB/s from moto on this machine's cores."
    )


def section(results: dict[str, dict]) -> str:
    def details(figures: dict) -> str:
        split, preprocess = figures["train_split"], figures["preprocess"]
        ratios, bounded = figures["ratios_vs_arrays"], figures["loaders"]["s3_bounded"]
        return (
            f"{split['samples']} training photos at {figures['image_size']} px, batch "
            f"{figures['batch_size']}, {figures['workers']} loader workers, each figure the "
            f"median of {figures['repeats']} rounds. Against the arrays: shards in a folder "
            f"{ratios['folder']:.2f}x, on S3 cold {ratios['s3_cold']:.2f}x, warm "
            f"{ratios['s3_warm']:.2f}x.\n\n{loader_table(figures)}\n\n"
            f"The train split on S3: {split['bytes'] / MB:.1f} MB in {split['chunks']} chunks "
            f"(the largest {split['largest_chunk_bytes'] / MB:.1f} MB), "
            f"{split['bytes_per_sample']:,} bytes a sample. The small cache "
            f"({bounded['cache_size']}) held at most {bounded['cache_peak_bytes'] / MB:.1f} MB, "
            f"{bounded['cache_peak_bytes'] / split['largest_chunk_bytes']:.1f} times the "
            f"largest chunk.\n\n{disk_table(figures)}\n\n"
            f"Preprocess to shards, {preprocess['workers']} workers, each figure the median of "
            f"{preprocess['repeats']} runs: peak ratio {preprocess['ratio']:.3f} (target <= "
            f"{preprocess['target']:.2f}: {'met' if preprocess['met'] else '**not met**'}); "
            f"{preprocess['pairs_per_s']:.1f} pairs/s, {preprocess['pairs_per_s_per_core']:.1f} "
            f"per core.\n\n{preprocess_table(figures)}\n\n{on_paper(figures)}"
        )

    return machine_sections(TITLE, EXPLANATION, results, details)
