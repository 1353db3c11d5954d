"""preprocess with output_format=shards: the same rows, split and report as the arrays, written
by `litdata.optimize` to a folder or under s3://.

LitData decodes in its own worker processes, so each worker notes what it did with every row
(its digest, or why it was skipped) in a ledger file of its own; the report, the bad-row list
and the fingerprint are built from the ledgers once the splits are written, in row order, so
they are the arrays' to the byte.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from pipeline import folders, locks
from pipeline.data.cache import MANIFEST_COLUMNS, MANIFEST_FILE, S3_SCHEME, SHARDS, SPLITS
from pipeline.data.layout import Pair
from pipeline.data.preprocess import (
    PreprocessReport,
    SplitReport,
    decode_task,
    finish,
    finish_digest,
    plan,
    record_of,
    row_digest,
    split_tasks,
)
from pipeline.data.shards import (
    check_bucket,
    forget_record,
    verify_split,
    write_file,
    write_record,
    write_split,
)
from pipeline.errors import PipelineError, first_line
from pipeline.images import DEFAULT_MAX_PIXELS
from pipeline.processes import environment
from pipeline.tracking.artifacts import cache_root


def ledgered_sample(task: tuple[int, str, str, int, int], ledger: str) -> dict | None:
    """One row decoded for LitData, its outcome appended to this worker's ledger."""
    row, rgb, binary, rescaled, reason = decode_task(task)
    entry = {"row": row, "reason": reason, "rescaled": rescaled}
    if rgb is not None:
        entry |= {
            "digest": row_digest(rgb, binary).hex(),
            "foreground": int(binary.sum()),
            "pixels": int(binary.size),
        }
    with open(Path(ledger) / f"{os.getpid()}.jsonl", "a") as notes:
        notes.write(json.dumps(entry) + "\n")
    return None if rgb is None else {"row": row, "image": rgb, "mask": binary}


def read_ledger(ledger: Path) -> dict[int, dict]:
    entries = {}
    for notes in ledger.glob("*.jsonl"):
        for line in notes.read_text().splitlines():
            entry = json.loads(line)
            entries[entry["row"]] = entry
    return entries


@contextmanager
def private_chunk_folders(scratch: Path) -> Iterator[None]:
    """LitData stages chunks in one folder per machine by default; a private one keeps two
    preprocess runs at once (or a dead one's leftovers) out of each other's shards."""
    names = ("DATA_OPTIMIZER_CACHE_FOLDER", "DATA_OPTIMIZER_DATA_CACHE_FOLDER")
    with environment({name: str(scratch / name.lower()) for name in names}):
        yield


def preprocess_to_shards(
    raw_dir: Path,
    output_dir: str,
    image_size: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    strict: bool = False,
    num_workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PreprocessReport:
    """Shard the dataset under `raw_dir` to `output_dir` (a folder, or s3://bucket/prefix)."""
    on_s3 = output_dir.startswith(S3_SCHEME)
    if on_s3:
        check_bucket(output_dir, "output_dir")
        target = output_dir.rstrip("/")
    else:
        folder = Path(output_dir).expanduser().resolve()
        folders.check_replaceable(folder, "output_dir")
        target = str(folder)
    index, pairs, assignment, report = plan(raw_dir, target, val_fraction, test_fraction, seed)
    workers = num_workers if num_workers > 0 else (os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="unet-person-shards-") as scratch:
        if on_s3:
            with writing(target):
                forget_record(target)
                entries = _write(
                    target, pairs, assignment, image_size, max_pixels, workers, scratch
                )
                _finish(report, index, strict, entries, pairs, assignment, image_size, target)
        else:
            with folders.staging_beside(folder) as staging:
                root = str(staging)
                entries = _write(root, pairs, assignment, image_size, max_pixels, workers, scratch)
                _finish(report, index, strict, entries, pairs, assignment, image_size, root)
                folders.publish(staging, folder)
    return report


_WRITING: set[str] = set()  # the S3 locations this process holds the writer's lock of


@contextmanager
def writing(output_dir: str) -> Iterator[None]:
    """Hold, on this machine, the lock of an S3 shards location while it is written and read
    back (the entry point logs its record and manifest); taken once per process.

    Two preprocess runs into one prefix would delete each other's chunks (LitData's overwrite)
    between their checks and records; here the second waits for the first. Across machines
    nothing waits, but the readers' check of every chunk still refuses a mixed result.
    """
    target = output_dir.rstrip("/")
    if not target.startswith(S3_SCHEME) or target in _WRITING:
        yield
        return
    name = hashlib.sha256(target.encode()).hexdigest()[:20]
    with locks.hold(cache_root() / "locks" / f"shards-{name}.lock", purpose=f"writing {target}"):
        _WRITING.add(target)
        try:
            yield
        finally:
            _WRITING.discard(target)


def _write(
    root: str,
    pairs: list[Pair],
    assignment: dict[str, list[int]],
    image_size: int,
    max_pixels: int,
    workers: int,
    scratch: str,
) -> dict[int, dict]:
    """Every split's shards under `root`; returns each decoded row's ledger entry."""
    by_row = {pair.row: pair for pair in pairs}
    ledger = Path(scratch) / "ledger"
    ledger.mkdir()
    sample = functools.partial(ledgered_sample, ledger=str(ledger))
    with private_chunk_folders(Path(scratch)):
        for split in SPLITS:
            tasks = split_tasks(by_row, assignment[split], image_size, max_pixels)
            try:
                write_split(sample, tasks, root, split, max(1, min(workers, len(tasks))))
                verify_split(root, split)
            except PipelineError:
                raise
            except Exception as error:
                raise PipelineError(
                    f"output_dir={root}: writing the {split} shards failed "
                    f"({type(error).__name__}: {first_line(str(error), 200)}); nothing there is "
                    "marked finished: run preprocess again"
                ) from error
    return read_ledger(ledger)


def _finish(
    report: PreprocessReport,
    index: Path,
    strict: bool,
    entries: dict[int, dict],
    pairs: list[Pair],
    assignment: dict[str, list[int]],
    image_size: int,
    root: str,
) -> None:
    """The report, manifest and fingerprint from the ledgers, in row order as the arrays build
    them; the record is written last."""
    by_row = {pair.row: pair for pair in pairs}
    digest = hashlib.sha256()
    manifest = []
    for split in SPLITS:
        written = SplitReport()
        for row in assignment[split]:
            if row not in by_row:  # listed as unusable by plan()
                continue
            pair, entry = by_row[row], entries[row]
            if entry["reason"]:
                report.bad_rows.append((row, pair.image_name, pair.mask_name, entry["reason"]))
                continue
            manifest.append((split, written.rows, row, pair.image_name, pair.mask_name))
            digest.update(bytes.fromhex(entry["digest"]))
            written.rows += 1
            written.foreground_pixels += entry["foreground"]
            written.total_pixels += entry["pixels"]
            report.resized_masks += entry["rescaled"]
        report.splits[split] = written
    finish(report, index, strict)
    table = pd.DataFrame(manifest, columns=MANIFEST_COLUMNS).to_csv(index=False).encode()
    report.digest = finish_digest(digest.hexdigest(), table)
    write_file(root, MANIFEST_FILE, table)
    write_record(root, record_of(report, image_size, SHARDS))
