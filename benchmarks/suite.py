"""The CPU suite of issue 10 in one process: every benchmark of SUITE on one set of generated
data, one summary table, the figures kept and BENCHMARKS.md refreshed.

Sizes: `full` is each benchmark's own defaults; `quick` fits in 5 minutes on 2 cores; `smoke`
(hidden, for the tests) only checks that everything runs and writes well-formed figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import traceback
from pathlib import Path

import torch

from benchmarks import SUITE, benchmark, save, write_report
from benchmarks.measure import MIN_REPEATS, load_average
from benchmarks.report import summary_table
from benchmarks.workspace import Workspace

# Distinct rendered photo/mask pairs the datasets are made of, by scale.
DISTINCT = {"full": 200, "quick": 100, "smoke": 10}
SIZES: dict[str, dict[str, dict]] = {
    "full": {},
    "quick": {
        "loader": {"images": 200, "repeats": 5},
        "tracking_overhead": {"repeats": MIN_REPEATS},
        "preprocess_memory": {"repeats": MIN_REPEATS},
        "train_step": {"images": 160, "repeats": 8},
        "serving": {"width": 16, "repeats": 5},
    },
    "smoke": {
        "loader": {"images": 20, "repeats": MIN_REPEATS, "workers": [0], "seconds": 0.05},
        "tracking_overhead": {
            "images": 20,
            "image_size": 32,
            "width": 4,
            "epochs": 2,
            "repeats": MIN_REPEATS,
        },
        "preprocess_memory": {
            "small": 10,
            "large": 20,
            "image_size": 32,
            "workers": 1,
            "at_once": 2 * MIN_REPEATS,
            "repeats": MIN_REPEATS,
        },
        "train_step": {"images": 20, "image_size": 32, "width": 4, "repeats": MIN_REPEATS},
        "serving": {"photos": 1, "photo_side": 64, "image_size": 32, "width": 4},
    },
}


def default_options(name: str) -> argparse.Namespace:
    """A benchmark's options as its command line's defaults set them."""
    parser = argparse.ArgumentParser()
    benchmark(name).add_arguments(parser)
    return parser.parse_args([])


def options_for(name: str, scale: str, workspace: Workspace) -> argparse.Namespace:
    """A benchmark's defaults, with the scale's sizes and the shared workspace."""
    options = default_options(name)
    vars(options).update(SIZES[scale].get(name, {}), workspace=workspace)
    return options


def run_each(scale: str, workspace: Workspace, results: Path) -> tuple[list, list[str]]:
    """Every benchmark of SUITE in turn, its figures kept as it ends: the summary rows, and
    the names of those that failed."""
    rows, failed = [], []
    for name in SUITE:
        module = benchmark(name)
        print(f"\n== {name}: {module.TITLE}", flush=True)
        begun = time.perf_counter()
        try:
            figures = module.run(options_for(name, scale, workspace))
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        figures.update(scale=scale, wall_s=round(time.perf_counter() - begun, 1))
        print(f"{name}: {figures['wall_s']} s", flush=True)
        save(name, figures, results)
        rows.append((name, module.headline(figures), module.TARGET_TEXT))
    return rows, failed


def run_suite(scale: str, results: Path, report: Path) -> int:
    """Run every benchmark of SUITE, keep what each measured, print the summary; non-zero when
    one failed (the others' figures are kept)."""
    started, load, threads = time.perf_counter(), load_average(), torch.get_num_threads()
    if scale == "smoke":
        torch.set_num_threads(1)  # its figures mean nothing, and tests share the cores
    try:
        with tempfile.TemporaryDirectory(prefix="benchmarks-") as scratch:
            rows, failed = run_each(scale, Workspace(Path(scratch), DISTINCT[scale]), results)
    finally:
        torch.set_num_threads(threads)
    minutes = (time.perf_counter() - started) / 60
    print(
        f"\n{scale} run: {minutes:.1f} min; 1-minute load average {load} at the start, "
        f"{load_average()} at the end\n"
    )
    print(summary_table(rows))
    if failed:
        print(f"\nfailed: {', '.join(failed)} (see above); their earlier figures are kept")
    print(f"kept in {results}; wrote {write_report(results, report)}")
    return 1 if failed else 0
