"""Command `mlproject`: write the MLproject and docs/parameters.md from the parameter classes.

Each entry point's parameters, types, defaults and command are its `PARAMS` class's fields, so a
setting declared in a config (pipeline/settings.py) reaches train, main, ablate and tune, their
parameters, their commands and the reference page, by itself. Both files stay committed and
readable (the MLproject at the top level, where `mlflow run` reads it); a test fails when either
is not what this writes.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import textwrap
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.entrypoints import command_modules, entry_points
from pipeline.errors import PipelineError
from pipeline.orchestration.project import MLPROJECT, project_dir
from pipeline.params import Parameter, is_optional, parameters, parse, shown_default, text_of
from pipeline.search.space import searchable
from pipeline.settings import about

WIDTH = 100
# What `mlflow run` runs every entry point in; written as it is, above the entry points.
DOCKER_ENV = """\
# Every entry point runs in the trainer image (docker/Dockerfile; `docker compose build trainer`
# builds this tag). Without Docker, the same commands run as
# `python -m pipeline <entry point> --<param> <value>` (see docs/getting-started.md).
#
# MLflow joins the `docker run` arguments into one bash command line (run in this folder), so
# ${...} below is expanded by that shell on the host.
# MLflow itself passes MLFLOW_TRACKING_URI, MLFLOW_RUN_ID and MLFLOW_EXPERIMENT_ID (the
# experiment `mlflow run` chose, from --experiment-name or the host's MLFLOW_EXPERIMENT_NAME).
# MLFLOW_EXPERIMENT_NAME is left out on purpose: MLflow stops a run whose name and ID disagree,
# and an empty name fails as "Invalid experiment name".
# No `environment:` with credentials: MLflow puts every entry on that command line as
# `-e NAME=value`, where `ps` shows it to every user. The tracking server's user and password
# come from the host user's ~/.mlflow/credentials instead (MLflow clients read that file),
# mounted read-only into the home of the image's user, `trainer` (docker/Dockerfile).
# Data and checkpoints are this folder's data/ and checkpoints/. Create the three folders before
# the first run: a folder docker creates belongs to root. The image keeps its download caches
# in data/.
docker_env:
  image: unet-person-trainer:0.1.0
  volumes:
    - '"${PWD}/data":/mlflow/projects/code/data'
    - '"${PWD}/checkpoints":/mlflow/projects/code/checkpoints'
    - '"${HOME}/.mlflow":/home/trainer/.mlflow:ro'
  # Settings, never secrets: passed on, empty (the default) when the host has none.
  environment:
    - ["UNET_PERSON_MAX_PIXELS", '"${UNET_PERSON_MAX_PIXELS:-}"']
"""
MLPROJECT_TYPES = {str: "string", int: "int", float: "float", bool: "string"}


REFERENCE = Path("docs") / "parameters.md"


@dataclass(frozen=True)
class MlprojectParams:
    """Write the MLproject and docs/parameters.md from the entry points' parameter classes
    (pipeline/entrypoints/), or with --check true only say whether the committed ones are what
    they give."""

    check: bool = field(
        default=False, metadata=about("compare only: exit 1 if either file is out of date")
    )


PARAMS = MlprojectParams


def mlproject_text() -> str:
    blocks = [entry_point_block(name) for name in entry_points()]
    return (
        "\n".join(
            [
                "name: unet-person",
                "",
                "# Written by `python -m pipeline mlproject` from the entry points' parameter",
                "# classes (pipeline/entrypoints/): change those and run it again, not this file.",
                "#",
                DOCKER_ENV,
                "entry_points:",
                "\n\n".join(blocks),
            ]
        )
        + "\n"
    )


def params_of(name: str) -> type:
    return importlib.import_module(f"pipeline.entrypoints.{name}").PARAMS


def described(params_class: type) -> str:
    """The class's docstring as one paragraph, with what an empty setting means."""
    about_it = inspect.cleandoc(params_class.__doc__ or "").replace("\n", " ")
    if any(is_optional(found.kind) for found in parameters(params_class)):
        about_it += " An empty setting takes the recipe's value (pipeline/training/recipes.py)."
    return about_it


def entry_point_block(name: str) -> str:
    params_class = params_of(name)
    found = parameters(params_class)
    about_it = described(params_class)
    words = [f"--{each.name} {{{each.name}}}" for each in found]
    return "\n".join(
        [
            f"  {name}:",
            *textwrap.wrap(about_it, WIDTH, initial_indent="    # ", subsequent_indent="    # "),
            "    parameters:",
            *(f"      {each.name}: {declaration(each)}" for each in found),
            "    command: >-",
            *folded([f"python -m pipeline {name}", *words], "      "),
        ]
    )


def folded(words: list[str], indent: str) -> list[str]:
    """`words` in lines of at most WIDTH, none split (a `--name {name}` stays whole)."""
    lines = [indent + words[0]]
    for word in words[1:]:
        if len(lines[-1]) + 1 + len(word) > WIDTH:
            lines.append(indent + word)
        else:
            lines[-1] += " " + word
    return lines


def declaration(found: Parameter) -> str:
    """`{type: ..., default: ...}`; a required parameter has no default."""
    kind_name = "string" if is_optional(found.kind) else MLPROJECT_TYPES[found.kind]
    if found.required:
        return f"{{type: {kind_name}}}"
    return f"{{type: {kind_name}, default: {scalar(text_of(found.default), kind_name)}}}"


def scalar(text: str, kind_name: str) -> str:
    """`text` as YAML reads it back: a string that YAML would take for something else (true,
    10, empty, a colon) in double quotes, a number as it is."""
    if kind_name != "string":
        return text
    try:
        plain = yaml.safe_load(f"{{value: {text}}}") if text else None
    except yaml.YAMLError:  # local[*]: `*` starts an alias
        plain = None
    return text if plain == {"value": text} else json.dumps(text)


def reference_text() -> str:
    """Every entry point's parameters with default and help, and tune's search ranges."""
    lines = [
        "# Parameters",
        "",
        "Written by `python -m pipeline mlproject` from the entry points' parameter classes",
        "(`pipeline/entrypoints/`, the settings' declarations in the configs they configure):",
        "change those and run it again, not this page. `python -m pipeline <entry point> --help`",
        "says the same. Run them as `python -m pipeline <entry point> --<parameter> <value>` or",
        "`mlflow run . -e <entry point> -P <parameter>=<value>`.",
    ]
    for module in command_modules():
        params_class = params_of(module.name)
        where = "" if module.in_mlproject else " (no run; not in the MLproject)"
        lines += ["", f"## `{module.name}`{where}", "", described(params_class)]
        own = getattr(params_class, "OWN_PARAMETERS", "")
        group = None
        for found in parameters(params_class):
            if found.group != group:
                group = found.group
                lines += ["", *([f"**{group or own}**", ""] if group or own else [])]
                lines += ["| parameter | type | default | allowed | what it is |"]
                lines += ["|---|---|---|---|---|"]
            allowed = ", ".join(f"`{text_of(choice)}`" for choice in found.choices or ())
            lines.append(
                f"| `{found.name}` | {type_name(found.kind)} | {cell(shown_default(found))} | "
                f"{allowed} | {cell(found.help)} |"
            )
    lines += ["", "## Search ranges of `tune`", "", SEARCH_RANGES_ABOUT, ""]
    lines += ["| setting | range | why |", "|---|---|---|"]
    for name, search in searchable().items():
        lines.append(f"| `{name}` | {search.describe()} | {cell(search.why)} |")
    return "\n".join(lines) + "\n"


SEARCH_RANGES_ABOUT = (
    "`--search_space default` searches each of these; a range is declared beside its setting "
    "(`setting(..., search=...)`) and checked against the values the setting allows."
)


def type_name(kind: typing.Any) -> str:
    """int, float, str or bool, for a setting that may be left empty too."""
    options = [option for option in typing.get_args(kind) if option is not type(None)]
    return (options[0] if options else kind).__name__


def cell(text: str) -> str:
    """Text in a Markdown table cell."""
    return text.replace("|", "\\|")


GENERATED = {MLPROJECT: mlproject_text, REFERENCE: reference_text}


def main(argv: list[str] | None = None) -> int:
    try:
        params = parse(PARAMS, argv, prog="python -m pipeline mlproject")
        for name, text_of_file in GENERATED.items():
            path = project_dir() / name
            text = text_of_file()
            if not params.check:
                path.write_text(text)
                print(f"wrote {path}")
            elif not path.is_file() or path.read_text() != text:
                raise PipelineError(
                    f"{path} is not what the parameter classes give: run `python -m pipeline "
                    "mlproject` and commit it"
                )
            else:
                print(f"{path} is up to date")
    except PipelineError as error:
        print(f"mlproject: error: {error}", file=sys.stderr)
        return 1
    return 0
