"""`python -m pipeline <entry point> [--param value ...]`, the commands the MLproject runs."""

from __future__ import annotations

import importlib
import sys

from pipeline.orchestration.project import die_with_parent

ENTRY_POINTS = (
    "download",
    "preprocess",
    "train",
    "evaluate",
    "promote",
    "predict",
    "main",
    "ablate",
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ENTRY_POINTS:
        print(
            f"usage: python -m pipeline {{{','.join(ENTRY_POINTS)}}} [--param value ...]",
            file=sys.stderr,
        )
        return 2
    die_with_parent()
    module = importlib.import_module(f"pipeline.entrypoints.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
