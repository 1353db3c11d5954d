"""Benchmarks, one module each: `python -m benchmarks <name>` measures, prints a table, keeps its
figures in benchmarks/results/<machine>.json under <name>, and rewrites BENCHMARKS.md from every
machine's results; `python -m benchmarks report` only rewrites BENCHMARKS.md.
`python -m benchmarks [--quick]` runs the CPU suite (SUITE) in one process and `--gpu` the GPU
training benchmark (benchmarks/suite.py).

A benchmark module has TITLE, `add_arguments(parser)`, `run(options) -> dict` (measures, prints
its table, returns the figures to keep) and `section(results) -> str` (its part of BENCHMARKS.md,
from {machine: figures}). The suite's and the GPU's modules also have TARGET_TEXT and
`headline(figures)`, their row in the summary at the top of BENCHMARKS.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from importlib import import_module
from pathlib import Path
from types import ModuleType

from benchmarks.report import machine_line, rows_for, summary_table

# The CPU suite of issue 10, in the order it runs and is summarised.
SUITE = ("loader", "tracking_overhead", "preprocess_memory", "train_step", "serving")
GPU = ("gpu", "gpu_pipeline")
NAMES = (
    *SUITE,
    *GPU,
    "serving_memory",
    "tracking_load",
    "onnx_speed",
    "checkpoint_save",
    "tune",
    "spark_predict",
    "streaming",
)
RESULTS = Path(__file__).resolve().parent / "results"
REPORT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = """# Benchmarks

Measured by `python -m benchmarks` (see `benchmarks/`): `--quick` runs the CPU suite of issue 10
in under 5 minutes on 2 cores, without it the same at larger sizes, `--gpu` the GPU training
benchmark (`benchmarks/gpu.sh` on a GPU machine), and `python -m benchmarks <name>` one benchmark.
Each keeps its figures in `benchmarks/results/<machine>.json`; this file is written from those
(`python -m benchmarks report`): edit the code, not this file. Every figure is the median of at
least 3 repeats; ratios compare figures of one run on one machine.
"""


def benchmark(name: str) -> ModuleType:
    return import_module(f"benchmarks.{name}")


def machine() -> dict[str, str | int]:
    """What the figures depend on besides the code: the CPU, its cores, the memory, the GPU and
    torch."""
    import torch  # here: `report` needs no torch

    cpu = platform.processor() or platform.machine()
    memory_kb = 0
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 1,
        "memory_gib": round(memory_kb / 2**20),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
    }


def machine_name(facts: dict[str, str | int]) -> str:
    """A file name for a machine: its CPU and core count, e.g. `amd-epyc-2-cores`."""
    return re.sub(r"[^a-z0-9]+", "-", f"{facts['cpu']} {facts['cores']} cores".lower()).strip("-")


def save(name: str, figures: dict, results: Path = RESULTS) -> Path:
    """Keep a benchmark's figures for this machine, beside the other benchmarks' figures."""
    facts = machine()
    path = results / f"{machine_name(facts)}.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    kept[name] = {"machine": facts, "date": datetime.date.today().isoformat(), **figures}
    results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kept, indent=2) + "\n")
    return path


def summary(machines: dict[str, dict]) -> str:
    """The summary tables: each machine's suite and GPU rows; GPU rows as not measured while no
    machine has any."""
    modules = {name: benchmark(name) for name in (*SUITE, *GPU)}
    measured_gpu = any(name in kept for kept in machines.values() for name in GPU)
    parts = ["## Summary\n"]
    for host, kept in machines.items():
        present = [name for name in modules if name in kept]
        if not present:
            continue
        first = kept[present[0]]
        load = first.get("load_average", {}).get("before")
        shown = modules if not measured_gpu else {name: modules[name] for name in present}
        parts.append(machine_line(host, first["machine"], first["date"], load) + "\n")
        parts.append(summary_table(rows_for(kept, shown)) + "\n")
    if len(parts) == 1:
        parts.append("No figures of the suite yet: run `python -m benchmarks --quick`.\n")
    return "\n".join(parts)


def write_report(results: Path = RESULTS, report: Path = REPORT) -> Path:
    """BENCHMARKS.md from every machine's results: the summary, then one section per benchmark."""
    machines = {path.stem: json.loads(path.read_text()) for path in sorted(results.glob("*.json"))}
    sections = [HEADER, summary(machines)]
    for name in NAMES:
        kept = {host: figures[name] for host, figures in machines.items() if name in figures}
        if kept:
            sections.append(benchmark(name).section(kept))
    report.write_text("\n".join(sections))
    return report
