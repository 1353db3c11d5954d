"""The search space: the settings `tune` searches, each with the range declared beside it
(pipeline/settings.py, `setting(..., search=...)`), so a setting joins the search where it is
declared and no tune code changes."""

from __future__ import annotations

from typing import Any

from pipeline.errors import PipelineError
from pipeline.settings import SearchRange, declared
from pipeline.training.recipes import Recipe

DEFAULT_SPACE = "default"


def searchable() -> dict[str, SearchRange]:
    """Every setting with a declared range, by parameter name, in declaration order."""
    return {
        name: spec.metadata["search"]
        for name, _, spec in declared(Recipe)
        if spec.metadata.get("search") is not None
    }


def parse_search_space(text: str) -> tuple[str, ...]:
    """`default` (every setting with a declared range) or a comma list of setting names."""
    ranges = searchable()
    if text.strip() == DEFAULT_SPACE:
        return tuple(ranges)
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise PipelineError(
            f"parameter search_space={text!r} names no setting: give {DEFAULT_SPACE} or a comma "
            f"list of {', '.join(ranges)}"
        )
    settings = {name for name, _, _ in declared(Recipe)}
    for name in names:
        if name not in settings:
            raise PipelineError(
                f"parameter search_space: {name!r} is no setting; searchable: {', '.join(ranges)}"
            )
        if name not in ranges:
            raise PipelineError(
                f"parameter search_space: setting {name!r} declares no search range (add "
                f"search=... to its declaration); searchable: {', '.join(ranges)}"
            )
    if len(set(names)) != len(names):
        raise PipelineError(f"parameter search_space={text!r} names a setting twice")
    return names


def suggest(trial: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The trial's value for each named setting, drawn from its declared range."""
    ranges = searchable()
    values = {}
    for name in names:
        search = ranges[name]
        if search.kind == "choice":
            values[name] = trial.suggest_categorical(name, list(search.choices))
        elif search.kind == "int":
            values[name] = trial.suggest_int(name, search.low, search.high, log=search.log)
        else:
            values[name] = trial.suggest_float(name, search.low, search.high, log=search.log)
    return values
