"""The summary at the top of BENCHMARKS.md and of `--quick`: one row per benchmark with its
figures, its ratio and whether it meets the target of issue 10."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType

NOT_MEASURED = "not measured (no GPU machine was available)"


@dataclass(frozen=True)
class Headline:
    """One benchmark's row: `met` is None where there is no target to meet (report only)."""

    figures: str
    ratio_text: str
    target: str
    met: bool | None


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[object]], text_columns: int = 1
) -> str:
    """A Markdown table whose first `text_columns` columns are left-aligned and the rest, the
    figures, right-aligned."""
    rule = "|" + "|".join(["---"] * text_columns + ["---:"] * (len(header) - text_columns)) + "|"
    return "\n".join([_row(header), rule, *map(_row, rows)])


def _row(cells: Sequence[object]) -> str:
    return "|" + "|".join(f" {cell} " if cell != "" else " " for cell in cells) + "|"


def verdict(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "n/a (reported)"}[met]


def summary_table(rows: list[tuple[str, Headline | None, str]]) -> str:
    """Rows of (benchmark key, its headline or None when not measured, target when not)."""
    lines = ["| benchmark | figures | ratio | target | met? |", "|---|---|---:|---|---|"]
    for name, headline, target in rows:
        if headline is None:
            lines.append(f"| `{name}` | {NOT_MEASURED} | | {target} | |")
        else:
            lines.append(
                f"| `{name}` | {headline.figures} | {headline.ratio_text} | {headline.target} "
                f"| {verdict(headline.met)} |"
            )
    return "\n".join(lines)


def machine_line(name: str, facts: dict, date: str, load: float | None) -> str:
    """Which machine a summary's figures come from, in words."""
    gpu = facts.get("gpu", "none")
    torch_version = facts.get("torch", "?")
    load_text = f"; 1-minute load average {load} at the start" if load is not None else ""
    return (
        f"**{facts['cpu']}**, {facts['cores']} cores, {facts['memory_gib']} GiB, GPU: {gpu}; "
        f"torch {torch_version}; `{name}`, {date}{load_text}."
    )


def rows_for(kept: dict[str, dict], modules: dict[str, ModuleType]) -> list:
    """Summary rows for one machine's kept results, in `modules`' order; a GPU benchmark that
    has no figures on this machine shows as not measured."""
    rows = []
    for name, module in modules.items():
        if name in kept:
            rows.append((name, module.headline(kept[name]), module.TARGET_TEXT))
        elif getattr(module, "NEEDS_GPU", False):
            rows.append((name, None, module.TARGET_TEXT))
    return rows


def machine_sections(
    title: str, explanation: str, results: dict[str, dict], details: Callable[[dict], str]
) -> str:
    """A CPU benchmark's part of BENCHMARKS.md: how it measures, then per machine what it ran
    (`details` of its figures, which end with the table), with the load around it."""
    parts = [f"## {title}\n\n{explanation}"]
    for machine, figures in sorted(results.items()):
        facts, load = figures["machine"], figures["load_average"]
        parts.append(
            f"### {facts['cpu']}, {facts['cores']} cores\n\n`{machine}`, {figures['date']}: "
            f"1-minute load average {load['before']} before, {load['after']} after; "
            f"{details(figures)}\n"
        )
    return "\n".join(parts)
