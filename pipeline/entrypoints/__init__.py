"""The pipeline's commands, one module each, found by their docstrings: a module whose docstring
begins "Entry point `name`:" is a step of the MLproject, "Command `name`:" a command outside it
(it opens no run). Each module names its parameters class `PARAMS` and has `main(argv)`.

So a new entry point is one new module here (and its test); `python -m pipeline`, its usage and
the MLproject (`python -m pipeline mlproject`) find it. Read without importing the modules, so
`python -m pipeline --help` starts in a moment.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

FOLDER = Path(__file__).parent
HEADING = re.compile(r"(Entry point|Command) `([a-z_]+)`: (.+)", re.S)


@dataclass(frozen=True)
class CommandModule:
    name: str
    summary: str  # the docstring's first line after the name
    in_mlproject: bool


def command_modules() -> list[CommandModule]:
    """Every command module of this folder, by name; a module whose docstring follows neither
    form (the runner) is none."""
    found = []
    for path in sorted(FOLDER.glob("*.py")):
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        heading = HEADING.match(docstring)
        if heading is None:
            continue
        kind, name, summary = heading.groups()
        if name != path.stem:
            raise ValueError(f"{path} names itself `{name}`: the module's name is the command's")
        found.append(CommandModule(name, summary.splitlines()[0], kind == "Entry point"))
    return found


def entry_points() -> tuple[str, ...]:
    """The MLproject's entry points."""
    return tuple(module.name for module in command_modules() if module.in_mlproject)
