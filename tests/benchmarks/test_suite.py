"""The benchmark suite's machinery (issue 10): the `--quick` suite, run at tiny sizes, writes
well-formed figures and a report into the folders it is given; `--gpu` without CUDA refuses and
writes nothing. No figure is checked against a target: timings on a shared machine say nothing
here, and the suite's sizes are too small to mean anything."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from benchmarks import GPU, SUITE, benchmark
from benchmarks.__main__ import main
from benchmarks.measure import MIN_REPEATS
from benchmarks.report import NOT_MEASURED

MACHINE_FACTS = ("cpu", "cores", "memory_gib", "gpu", "torch")


def repeats_and_medians(name: str, figures: dict) -> list[tuple[list[float], float]]:
    """Each benchmark's raw repeats beside the median figure made of them."""
    if name == "loader":
        return [
            (setting["repeats_batches_per_s"][kind], setting[f"{kind}_batches_per_s"])
            for setting in figures["by_workers"]
            for kind in ("cache", "decode")
        ]
    if name == "tracking_overhead":
        return [
            ([seconds for fit in figures["epoch_seconds"][mode] for seconds in fit], median)
            for mode, median in figures["epoch_s"].items()
        ]
    if name == "preprocess_memory":
        return [
            ([run["peak_mb"] for run in figures["runs"][size]], figures[size]["peak_mb"])
            for size in ("small", "large")
        ]
    if name == "train_step":
        return [
            (figures["epoch_images_per_s"][side], rate)
            for side, rate in figures["images_per_s"].items()
        ]
    return [
        (call["repeats_s"][side], call["seconds"][side])
        for call in figures["calls"].values()
        for side in call["seconds"]
    ]


def test_quick_suite_writes_well_formed_figures_and_the_report(tmp_path: Path, capsys) -> None:
    results, report = tmp_path / "results", tmp_path / "BENCHMARKS.md"

    assert main(["--smoke", "--results-dir", str(results), "--report", str(report)]) == 0

    (kept,) = results.glob("*.json")
    figures_by_name = json.loads(kept.read_text())
    assert set(figures_by_name) == set(SUITE)
    for name, figures in figures_by_name.items():
        assert set(MACHINE_FACTS) <= set(figures["machine"]), name
        assert figures["date"] and figures["scale"] == "smoke"
        assert set(figures["load_average"]) == {"before", "after"}
        key = "overhead_pct" if name == "tracking_overhead" else "ratio"
        assert isinstance(figures[key], float | int) and not isinstance(figures[key], bool)
        assert math.isfinite(figures[key]), (name, figures[key])
        assert figures["repeats"] >= MIN_REPEATS, name
        for raw, median in repeats_and_medians(name, figures):
            assert len(raw) >= MIN_REPEATS, (name, raw)
            assert statistics.median(raw) == pytest.approx(median, rel=0.01, abs=0.01), name
    assert figures_by_name["serving"]["met"] is None  # reported, no target

    printed = capsys.readouterr().out
    text = report.read_text()
    for name in SUITE:
        assert f"| `{name}` |" in printed
        assert f"| `{name}` |" in text
        assert f"## {benchmark(name).TITLE}" in text
    for name in GPU:
        assert f"| `{name}` | {NOT_MEASURED} |" in text
    assert figures_by_name["loader"]["machine"]["cpu"] in text.split("## Summary", 1)[1]


@pytest.mark.parametrize("command", [["--gpu"], ["gpu"], ["gpu_pipeline"]])
def test_gpu_benchmarks_without_cuda_exit_non_zero_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, command: list[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results, report = tmp_path / "results", tmp_path / "BENCHMARKS.md"

    with pytest.raises(SystemExit) as stopped:
        main(["--results-dir", str(results), "--report", str(report), *command])

    assert stopped.value.code == 1
    assert "no GPU is present" in capsys.readouterr().out
    assert not results.exists() and not report.exists()


def test_a_benchmark_name_with_quick_is_refused(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--quick", "loader"])
    assert stopped.value.code == 2
    assert "give no benchmark name" in capsys.readouterr().err
