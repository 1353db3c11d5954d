"""Peak memory of `python -m pipeline preprocess`, all its processes together, on a small and a
4x larger generated dataset: flat if rows stream to disk (see EXPLANATION).

    python -m benchmarks preprocess_memory                      # 500 vs 2000 pairs, 3 repeats
    python -m benchmarks preprocess_memory --small 250 --large 1000
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.measure import (
    MB,
    check_repeats,
    descendants,
    experiment_store,
    load_average,
    median,
    mlflow_environment,
    rss_bytes,
    taking_turns,
)
from benchmarks.report import Headline, machine_sections, markdown_table

TITLE = "Preprocess memory: 500 vs 2,000 pairs"
TARGET = 1.10
TARGET_TEXT = "ratio <= 1.10"
SAMPLE_S = 0.02
REPOSITORY = Path(__file__).resolve().parent.parent
EXPLANATION = f"""\
`python -m pipeline preprocess` (the entry point, tracking into a SQLite store, `log_data
false`, `num_workers` 0: one worker process per core, as by default) on two generated
datasets of the pipeline's layout, the larger 4 times the smaller. While it runs, every
{SAMPLE_S * 1000:.0f} ms the benchmark reads the resident size and the peak resident size
(`VmHWM`) of the command and of every process below it (the pool's workers) from /proc.
**peak** is the sum of each process's own peak: no moment can have held more. **sampled
peak** is the largest sum of resident sizes seen at one moment. The ratio is the larger
dataset's peak over the smaller's; each figure is the median of the repeats, the two sizes
taking turns. Resident sizes count the shared pages of libraries in each process that maps
them (torch, NumPy), as the kernel's OOM accounting does.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--small", type=int, default=500, help="pairs in the smaller dataset")
    parser.add_argument("--large", type=int, default=2000, help="pairs in the larger dataset")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="runs per size (>= 3)")
    parser.add_argument("--workers", type=int, default=0, help="preprocess's num_workers")
    # For the tests: runs started together (memory is per process tree, but their seconds then
    # share the cores).
    parser.add_argument("--at-once", type=int, default=1, help=argparse.SUPPRESS)


def watch(commands: list[tuple[list[str], dict[str, str]]], log: Path) -> list[dict[str, float]]:
    """Run `commands` (argv, environment) at once to their ends, sampling each one's processes'
    memory: for each, its peaks in MB and its seconds."""
    started = time.perf_counter()
    with log.open("a") as output:
        processes = [
            subprocess.Popen(argv, env=env, cwd=REPOSITORY, stdout=output, stderr=subprocess.STDOUT)
            for argv, env in commands
        ]
        peaks: list[dict[int, int]] = [{} for _ in processes]
        sampled, seconds = [0] * len(processes), [0.0] * len(processes)
        while any(process.poll() is None for process in processes):
            for index, process in enumerate(processes):
                if process.poll() is not None:
                    continue
                now = 0
                for pid in [process.pid, *descendants(process.pid)]:
                    peaks[index][pid] = max(peaks[index].get(pid, 0), rss_bytes(pid, "VmHWM"))
                    now += rss_bytes(pid)
                sampled[index] = max(sampled[index], now)
                seconds[index] = time.perf_counter() - started
            time.sleep(SAMPLE_S)
    for (argv, _), process in zip(commands, processes, strict=True):
        if process.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed:\n{log.read_text()[-3000:]}")
    return [
        {
            "peak_mb": round(sum(peak.values()) / MB, 1),
            "sampled_peak_mb": round(most / MB, 1),
            "processes": len(peak),
            "seconds": round(run_seconds, 2),
        }
        for peak, most, run_seconds in zip(peaks, sampled, seconds, strict=True)
    ]


def run(options: argparse.Namespace) -> dict:
    check_repeats(options.repeats)
    folder = options.workspace.folder / "preprocess-memory"
    folder.mkdir()
    store = experiment_store(folder)  # made first, not in a run's figures
    sizes = {"small": options.small, "large": options.large}
    datasets = {name: options.workspace.raw(rows) for name, rows in sizes.items()}
    before = load_average()
    order = taking_turns(list(sizes), options.repeats)
    runs: dict[str, list[dict]] = {name: [] for name in sizes}
    for first in range(0, len(order), options.at_once):
        batch = order[first : first + options.at_once]
        commands = []
        for name, repeat in batch:
            own_store = shutil.copy(store, folder / f"{name}-{repeat}.db")
            argv = [
                *(sys.executable, "-m", "pipeline", "preprocess"),
                *("--raw_dir", str(datasets[name])),
                *("--output_dir", str(folder / f"{name}-{repeat}")),
                *("--image_size", str(options.image_size), "--log_data", "false"),
                *("--num_workers", str(options.workers)),
            ]
            commands.append((argv, mlflow_environment(f"sqlite:///{own_store}")))
        for (name, _), figures in zip(batch, watch(commands, folder / "log"), strict=True):
            runs[name].append(figures)
    figures = {
        name: {
            "pairs": sizes[name],
            **{
                key: median([run[key] for run in runs[name]], 1)
                for key in ("peak_mb", "sampled_peak_mb", "seconds")
            },
            "processes": max(run["processes"] for run in runs[name]),
        }
        for name in sizes
    }
    ratio = round(figures["large"]["peak_mb"] / figures["small"]["peak_mb"], 3)
    figures = {
        "ratio": ratio,
        "target": TARGET,
        "met": ratio <= TARGET,
        **figures,
        "image_size": options.image_size,
        "num_workers": options.workers,
        "runs_at_once": options.at_once,
        "repeats": options.repeats,
        "runs": runs,
        "load_average": {"before": before, "after": load_average()},
    }
    print(table(figures))
    return figures


def headline(figures: dict) -> Headline:
    small, large = figures["small"], figures["large"]
    return Headline(
        figures=(
            f"peak {large['peak_mb']:.0f} MB at {large['pairs']} pairs vs "
            f"{small['peak_mb']:.0f} MB at {small['pairs']}"
        ),
        ratio_text=f"{figures['ratio']:.3f}",
        target=TARGET_TEXT,
        met=figures["met"],
    )


def table(figures: dict) -> str:
    header = ["pairs", "peak MB (sum of each process's peak)", "sampled peak MB", "processes"]
    rows = [
        [
            figures[name]["pairs"],
            f"{figures[name]['peak_mb']:.0f}",
            f"{figures[name]['sampled_peak_mb']:.0f}",
            figures[name]["processes"],
            f"{figures[name]['seconds']:.1f}",
        ]
        for name in ("small", "large")
    ]
    return markdown_table([*header, "seconds"], rows, text_columns=0)


def section(results: dict[str, dict]) -> str:
    return machine_sections(
        TITLE,
        EXPLANATION,
        results,
        lambda figures: (
            f"{figures['image_size']} px, each figure the median of {figures['repeats']} runs; "
            f"ratio {figures['ratio']:.3f}.\n\n{table(figures)}"
        ),
    )
