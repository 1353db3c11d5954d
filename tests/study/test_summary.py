"""The study's summary: per-variant spread over seeds, Markdown and the chart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.study.summary import markdown_table, summarise, write_summary


def _runs() -> pd.DataFrame:
    rows = [
        ("skip", "skip_connections True → False", 1, 0.50),
        ("baseline", "the study's baseline", 1, 0.80),
        ("baseline", "the study's baseline", 2, 0.84),
        ("skip", "skip_connections True → False", 2, 0.54),
        ("paper", "recipe paper", 1, 0.60),
        ("paper", "recipe paper", 2, 0.70),
    ]
    frame = pd.DataFrame(rows, columns=["variant", "change", "seed", "test_dice"])
    frame["test_iou"] = frame["test_dice"] - 0.1
    frame["best_val_dice"] = frame["test_dice"] + 0.01
    frame["epochs_trained"] = 10
    frame["train_minutes"] = 1.5
    frame["parameters_millions"] = 0.12
    return frame


def test_summary_has_mean_spread_and_gain_over_the_baseline_first() -> None:
    table = summarise(_runs()).set_index("variant")
    assert list(table.index) == ["baseline", "paper", "skip"]
    assert table.loc["baseline", "test_dice_mean"] == pytest.approx(0.82)
    assert table.loc["paper", "test_dice_sd"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert table.loc["skip", "test_dice_min"] == pytest.approx(0.50)
    assert table.loc["skip", "test_dice_max"] == pytest.approx(0.54)
    assert table.loc["skip", "delta_vs_baseline"] == pytest.approx(-0.30)
    assert table.loc["paper", "seeds"] == 2


def test_a_failed_run_is_left_out_of_the_means() -> None:
    runs = _runs()
    runs.loc[runs["variant"].eq("paper") & runs["seed"].eq(2), "test_dice"] = np.nan
    table = summarise(runs).set_index("variant")
    assert table.loc["paper", "seeds"] == 1
    assert table.loc["paper", "test_dice_mean"] == pytest.approx(0.60)


def test_markdown_rows_show_mean_and_sd() -> None:
    lines = markdown_table(summarise(_runs())).splitlines()
    assert lines[0].startswith("| Variant | Change | Seeds | Test Dice | Δ vs baseline")
    assert len(lines) == 2 + 3
    assert lines[2].startswith(
        "| `baseline` | the study's baseline | 2 | 0.8200 ± 0.0283 | +0.0000"
    )
    assert "| `skip` |" in lines[4] and "| -0.3000 |" in lines[4]


def test_write_summary_writes_csvs_markdown_and_a_chart(tmp_path: Path) -> None:
    table = write_summary(tmp_path / "study", _runs())
    folder = tmp_path / "study"
    assert pd.read_csv(folder / "runs.csv").shape[0] == 6
    written = pd.read_csv(folder / "summary.csv")
    assert list(written["variant"]) == list(table["variant"])
    assert (folder / "summary.md").read_text() == markdown_table(table)
    with Image.open(folder / "test_dice.png") as chart:
        assert chart.format == "PNG"
        assert chart.width > 400 and chart.height > 200
