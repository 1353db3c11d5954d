"""`python -m pipeline <entry point> [--param value ...]`, the commands the MLproject runs."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

from pipeline.processes import die_with_parent

ENTRY_POINTS = (
    "download",
    "preprocess",
    "train",
    "evaluate",
    "promote",
    "predict",
    "export",
    "main",
    "ablate",
    "tune",
    "demo",
)
# Commands that only read what the pipeline recorded: no MLflow run, not in the MLproject.
READING_COMMANDS = ("history",)
ENTRY_POINT_FOLDER = Path(__file__).parent / "entrypoints"


def summary(entry_point: str) -> str:
    """The first line of the entry point's docstring, read without importing torch and MLflow."""
    source = (ENTRY_POINT_FOLDER / f"{entry_point}.py").read_text()
    docstring = ast.get_docstring(ast.parse(source)) or ""
    return docstring.splitlines()[0].split(": ", 1)[-1] if docstring else ""


def usage() -> str:
    width = max(map(len, ENTRY_POINTS + READING_COMMANDS))
    steps = [f"  {name:<{width}}  {summary(name)}" for name in ENTRY_POINTS]
    reading = [f"  {name:<{width}}  {summary(name)}" for name in READING_COMMANDS]
    return "\n".join(
        [
            "usage: python -m pipeline <entry point> [--param value ...]",
            "",
            "The unet-person pipeline's steps, as the MLproject runs them. Start with `main`.",
            "",
            "entry points:",
            *steps,
            "",
            "reading what was recorded:",
            *reading,
            "",
            "`python -m pipeline <entry point> --help` lists its parameters and their defaults.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not argv or argv[0] not in ENTRY_POINTS + READING_COMMANDS:
        unknown = f"unknown entry point {argv[0]!r}\n\n" if argv else ""
        print(unknown + usage(), file=sys.stderr)
        return 2
    die_with_parent()
    module = importlib.import_module(f"pipeline.entrypoints.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
