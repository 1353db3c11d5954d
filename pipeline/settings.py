"""Declared settings: each setting is one dataclass field, with its help text, its allowed values
and its bounds, in the config object of the part it configures (the network's in
`NetworkConfig`, the optimisation's in `OptimizationConfig`, ...).

Entry-point parameters are derived from these declarations, and values are checked against
them when a config is built, so a new setting is declared once, where it is used.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.errors import PipelineError

TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off"}
AUTO = "auto"
SETTING = "setting"  # the metadata key that marks a field made by `setting()`


@dataclass(frozen=True)
class SearchRange:
    """Where `tune` may look for a setting's value, declared beside the setting; `why` is where
    the range comes from, shown with it (docs/parameters.md, `tune --help`).

    `kind` is "float" or "int" (between `low` and `high`, on a log scale when `log`) or
    "choice" (one of `choices`).
    """

    kind: str
    why: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        scale = "log-uniform" if self.log else "uniform"
        return f"{self.kind} {scale} in [{self.low:g}, {self.high:g}]"


def between(low: float, high: float, why: str, *, log: bool = False) -> SearchRange:
    """A float range; `log` for scale parameters such as a learning rate."""
    return SearchRange("float", why, low, high, log)


def whole_between(low: int, high: int, why: str, *, log: bool = False) -> SearchRange:
    return SearchRange("int", why, low, high, log)


def one_of(*choices: Any, why: str) -> SearchRange:
    return SearchRange("choice", why, choices=choices)


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[Any, ...] | None = None,
    minimum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    search: SearchRange | None = None,
) -> Any:
    """A dataclass field that is a setting: `minimum` is the least allowed value, `above` and
    `below` bounds the value must lie strictly between; `search` the range `tune` may search
    (checked against those bounds where the setting is declared)."""
    metadata = {SETTING: True, "help": help, "choices": choices, "minimum": minimum}
    metadata |= {"above": above, "below": below, "search": search}
    if search is not None:
        _check_range(search, metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _check_range(search: SearchRange, metadata: dict[str, Any]) -> None:
    """A range must only hold values the setting allows: a declaration error, found on import."""
    ends = search.choices if search.kind == "choice" else (search.low, search.high)
    for value in ends:
        if metadata["choices"] is not None and value not in metadata["choices"]:
            raise ValueError(f"search value {value!r} is not one of {metadata['choices']}")
        if metadata["minimum"] is not None and value < metadata["minimum"]:
            raise ValueError(f"search value {value!r} is below the minimum {metadata['minimum']}")
        if metadata["above"] is not None and value <= metadata["above"]:
            raise ValueError(f"search value {value!r} is not above {metadata['above']}")
        if metadata["below"] is not None and value >= metadata["below"]:
            raise ValueError(f"search value {value!r} is not below {metadata['below']}")
    if search.kind != "choice" and not search.low < search.high:
        raise ValueError(f"search range [{search.low}, {search.high}] is empty")


def about(text: str) -> dict[str, str]:
    """The metadata of a parameter that is not a setting of a config: its help text alone; of a
    nested params or config field, the title its parameters are grouped under in `--help`."""
    return {"help": text}


def is_setting(spec: dataclasses.Field) -> bool:
    """Declared by `setting()`: a field with only `about()` help is a parameter, not a setting."""
    return spec.metadata.get(SETTING, False)


def check_settings(config: Any) -> None:
    """Refuse a config whose settings break their declarations, naming the parameter."""
    for spec in dataclasses.fields(config):
        if not is_setting(spec):
            continue
        value = getattr(config, spec.name)
        choices, minimum, above, below = (
            spec.metadata[key] for key in ("choices", "minimum", "above", "below")
        )
        if choices is not None and value not in choices:
            allowed = ", ".join(map(str, choices))
            raise PipelineError(f"parameter {spec.name}={value!r} is not one of {allowed}")
        if minimum is not None and value < minimum:
            raise PipelineError(f"parameter {spec.name}={value} must be at least {minimum}")
        if above is not None and value <= above:
            raise PipelineError(f"parameter {spec.name}={value} must be more than {above}")
        if below is not None and value >= below:
            raise PipelineError(f"parameter {spec.name}={value} must be less than {below}")


def declared(config_class: type) -> Iterator[tuple[str, type, dataclasses.Field]]:
    """Name, type and field of each setting of a config class, nested configs flattened: the
    names are the entry points' parameter names, so they are unique across the nest."""
    hints = typing.get_type_hints(config_class)
    for spec in dataclasses.fields(config_class):
        kind = hints[spec.name]
        if dataclasses.is_dataclass(kind):
            yield from declared(kind)
        elif is_setting(spec):
            yield spec.name, kind, spec


def flat_settings(config: Any) -> dict[str, Any]:
    """A config's settings, nested ones flattened, by parameter name."""
    values = {}
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if dataclasses.is_dataclass(value):
            values |= flat_settings(value)
        elif is_setting(spec):
            values[spec.name] = value
    return values


def with_settings(config: Any, changes: dict[str, Any]) -> Any:
    """`config` with the settings named in `changes` (flat names, at any depth) replaced.

    A name that is no setting of the config is an error, not silently dropped.
    """
    unknown = changes.keys() - {name for name, _, _ in declared(type(config))}
    if unknown:
        raise PipelineError(
            f"{', '.join(sorted(unknown))}: no setting of {type(config).__name__} has that name"
        )
    replaced = {}
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if dataclasses.is_dataclass(value):
            inner = {name: changes[name] for name, _, _ in declared(type(value)) if name in changes}
            if inner:
                replaced[spec.name] = with_settings(value, inner)
        elif spec.name in changes:
            replaced[spec.name] = changes[spec.name]
    return dataclasses.replace(config, **replaced)


def parse_bool(name: str, text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise PipelineError(f"parameter {name}={text!r} is not a boolean: use true or false")
