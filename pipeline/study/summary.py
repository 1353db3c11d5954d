"""The study's results: one row per run, one per variant (mean and spread over seeds), as CSV,
a Markdown table and a chart of test Dice per variant."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.study.variants import BASELINE

RUNS_FILE = "runs.csv"
SUMMARY_FILE = "summary.csv"
MARKDOWN_FILE = "summary.md"
CHART_FILE = "test_dice.png"
CHANGE_LABEL_WIDTH = 44


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Per variant: seeds, test Dice mean/sd/min/max, its gain over the baseline, and the
    means of the other figures; the baseline first, then by mean test Dice."""
    finished = runs.dropna(subset=["test_dice"])
    table = finished.groupby("variant", sort=False).agg(
        change=("change", "first"),
        seeds=("seed", "count"),
        test_dice_mean=("test_dice", "mean"),
        test_dice_sd=("test_dice", "std"),
        test_dice_min=("test_dice", "min"),
        test_dice_max=("test_dice", "max"),
        test_iou_mean=("test_iou", "mean"),
        best_val_dice_mean=("best_val_dice", "mean"),
        epochs_mean=("epochs_trained", "mean"),
        train_minutes_mean=("train_minutes", "mean"),
        parameters_millions=("parameters_millions", "first"),
    )
    baseline = table["test_dice_mean"].get(BASELINE, np.nan)
    table["delta_vs_baseline"] = table["test_dice_mean"] - baseline
    order = table["test_dice_mean"].sort_values(ascending=False).index.tolist()
    if BASELINE in order:
        order.remove(BASELINE)
        order.insert(0, BASELINE)
    return table.loc[order].reset_index()


def _number(value: float, digits: int, signed: bool = False) -> str:
    if pd.isna(value):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown_table(table: pd.DataFrame) -> str:
    """The summary as a GitHub Markdown table (mean ± sd over seeds where there are several)."""
    header = (
        "| Variant | Change | Seeds | Test Dice | Δ vs baseline | Test IoU | Best val Dice "
        "| Epochs | Train min | Params (M) |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for row in table.itertuples(index=False):
        dice = _number(row.test_dice_mean, 4)
        if row.seeds > 1:
            dice += f" ± {_number(row.test_dice_sd, 4)}"
        cells = [
            f"`{row.variant}`",
            row.change,
            str(row.seeds),
            dice,
            _number(row.delta_vs_baseline, 4, signed=True),
            _number(row.test_iou_mean, 4),
            _number(row.best_val_dice_mean, 4),
            _number(row.epochs_mean, 1),
            _number(row.train_minutes_mean, 1),
            _number(row.parameters_millions, 2),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return header + "\n".join(lines) + "\n"


def dice_chart(table: pd.DataFrame, runs: pd.DataFrame) -> Figure:
    """Mean test Dice per variant as bars, sd as error bars, each seed's run as a dot."""
    figure = Figure(figsize=(9, 0.6 * len(table) + 1.5), layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(len(table))[::-1]
    colours = ["tab:green" if name == BASELINE else "tab:blue" for name in table["variant"]]
    axes.barh(
        positions,
        table["test_dice_mean"],
        xerr=table["test_dice_sd"].fillna(0),
        color=colours,
        alpha=0.7,
        capsize=3,
    )
    for position, name in zip(positions, table["variant"], strict=True):
        scores = runs.loc[runs["variant"] == name, "test_dice"].dropna()
        axes.plot(scores, np.full(len(scores), position), "k.", markersize=5)
    if BASELINE in set(table["variant"]):
        axes.axvline(float(table["test_dice_mean"].iloc[0]), color="tab:green", linestyle="--")
    labels = [
        f"{row.variant}\n{textwrap.shorten(row.change, CHANGE_LABEL_WIDTH, placeholder=' …')}"
        for row in table.itertuples()
    ]
    axes.set_yticks(positions, labels, fontsize=8)
    axes.set_xlabel("test Dice (pooled over the test split)")
    low = float(np.nanmin(runs["test_dice"])) if runs["test_dice"].notna().any() else 0.0
    axes.set_xlim(max(0.0, low - 0.1), 1.0)
    seeds = int(table["seeds"].max()) if len(table) else 0
    axes.set_title(f"Architecture study: one change per variant, {seeds} seed(s) each")
    return figure


def write_summary(folder: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """Write runs.csv, summary.csv, summary.md and test_dice.png into `folder`; return the
    summary."""
    folder.mkdir(parents=True, exist_ok=True)
    table = summarise(runs)
    runs.to_csv(folder / RUNS_FILE, index=False)
    table.to_csv(folder / SUMMARY_FILE, index=False)
    (folder / MARKDOWN_FILE).write_text(markdown_table(table))
    dice_chart(table, runs).savefig(folder / CHART_FILE, dpi=120)
    return table
