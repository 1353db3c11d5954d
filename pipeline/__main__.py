"""`python -m pipeline <entry point> [--param value ...]`, the commands the MLproject runs."""

from __future__ import annotations

import difflib
import importlib
import sys

from pipeline.entrypoints import command_modules
from pipeline.processes import die_with_parent


def usage() -> str:
    modules = command_modules()
    width = max(len(module.name) for module in modules)
    steps = [f"  {m.name:<{width}}  {m.summary}" for m in modules if m.in_mlproject]
    others = [f"  {m.name:<{width}}  {m.summary}" for m in modules if not m.in_mlproject]
    return "\n".join(
        [
            "usage: python -m pipeline <entry point> [--param value ...]",
            "",
            "The unet-person pipeline's steps, as the MLproject runs them. Start with `main`.",
            "",
            "entry points:",
            *steps,
            "",
            "other commands (no run, not in the MLproject):",
            *others,
            "",
            "`python -m pipeline <entry point> --help` lists its parameters and their defaults.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    if not argv or argv[0] not in {module.name for module in command_modules()}:
        names = [module.name for module in command_modules()]
        close = difflib.get_close_matches(argv[0], names, n=1) if argv else []
        hint = f" (did you mean {close[0]}?)" if close else ""
        unknown = f"unknown entry point {argv[0]!r}{hint}\n\n" if argv else ""
        print(unknown + usage(), file=sys.stderr)
        return 2
    die_with_parent()
    module = importlib.import_module(f"pipeline.entrypoints.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
