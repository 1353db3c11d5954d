"""Benchmarks, one module each: `python -m benchmarks <name>` measures, prints a table, keeps its
figures in benchmarks/results/<machine>.json under <name>, and rewrites BENCHMARKS.md from every
machine's results; `python -m benchmarks report` only rewrites BENCHMARKS.md.

A benchmark module has TITLE, `add_arguments(parser)`, `run(options) -> dict` (measures, prints
its table, returns the figures to keep) and `section(results) -> str` (its part of BENCHMARKS.md,
from {machine: figures}).
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

NAMES = ("serving_memory", "tracking_load", "onnx_speed")
RESULTS = Path(__file__).resolve().parent / "results"
REPORT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = """# Benchmarks

Measured by `python -m benchmarks <name>` (see `benchmarks/`), which keeps its figures in
`benchmarks/results/<machine>.json`; this file is written from those by
`python -m benchmarks report`: edit the code, not this file.
"""


def benchmark(name: str) -> ModuleType:
    return import_module(f"benchmarks.{name}")


def machine() -> dict[str, str | int]:
    """What the figures depend on besides the code: the CPU, its cores and the memory."""
    cpu = platform.processor() or platform.machine()
    memory_kb = 0
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    return {"cpu": cpu, "cores": os.cpu_count() or 1, "memory_gib": round(memory_kb / 2**20)}


def machine_name(facts: dict[str, str | int]) -> str:
    """A file name for a machine: its CPU and core count, e.g. `amd-epyc-2-cores`."""
    return re.sub(r"[^a-z0-9]+", "-", f"{facts['cpu']} {facts['cores']} cores".lower()).strip("-")


def save(name: str, figures: dict) -> Path:
    """Keep a benchmark's figures for this machine, beside the other benchmarks' figures."""
    facts = machine()
    path = RESULTS / f"{machine_name(facts)}.json"
    kept = json.loads(path.read_text()) if path.exists() else {}
    kept[name] = {"machine": facts, "date": datetime.date.today().isoformat(), **figures}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kept, indent=2) + "\n")
    return path


def write_report() -> Path:
    """BENCHMARKS.md from every machine's results, one section per benchmark."""
    machines = {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))}
    sections = [HEADER]
    for name in NAMES:
        results = {host: kept[name] for host, kept in machines.items() if name in kept}
        if results:
            sections.append(benchmark(name).section(results))
    REPORT.write_text("\n".join(sections))
    return REPORT
