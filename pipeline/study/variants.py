"""The architecture study's variants: each changes one thing about the baseline recipe.

A variant is named by what it studies (`skip`, `depth_3`, ...) and describes the change it
made to the settings it was given, so the table reads the same whatever the baseline is.
A variant that would change nothing (`depth_4` of a depth-4 baseline) is left out. `all` is
every variant but those that need more than the package's own dependencies (`encoder`: the
optional extra and the Hub's weights), which a study names to run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.data.augment import AUGMENTATIONS
from pipeline.errors import PipelineError
from pipeline.model.encoders import NO_ENCODER
from pipeline.model.unet import UPSAMPLING_MODES
from pipeline.settings import with_settings
from pipeline.training.recipes import RECIPES, Recipe, resolve_recipe

BASELINE = "baseline"
ALL = "all"
OPTIMISATION = ("optimizer", "lr", "weight_decay", "schedule")
EMA_DECAY = 0.999  # the usual decay per step (timm's ModelEmaV3, Lightning's EMAWeightAveraging)
# The loss variant adds the Dice term to BCE, or takes it away; any other loss is compared with
# BCE + Dice.
WITH_DICE = {"bce": "bce_dice", "bce_dice": "bce"}
# The pretrained encoder the `encoder` variant tries: segmentation_models_pytorch's default.
STUDY_ENCODER = "resnet34"

Settings = dict[str, Any]  # a recipe's settings by parameter name (Recipe.settings())
Change = Callable[[Settings], Settings]


@dataclass(frozen=True)
class Variant:
    name: str
    change: Change
    recipe: str | None = None  # another recipe as the starting point (None: the study's)
    in_all: bool = True  # part of `all`; False: run only where named


@dataclass(frozen=True)
class PlannedVariant:
    """A variant applied to the study's baseline: its settings and what differs."""

    name: str
    recipe: str
    config: Recipe
    description: str

    @property
    def settings(self) -> Settings:
        return self.config.settings()


def _flip(name: str) -> Change:
    return lambda settings: {name: not settings[name]}


def _other(name: str, choices: tuple[str, ...]) -> Change:
    return lambda settings: {name: next(c for c in choices if c != settings[name])}


def _without_encoder(settings: Settings, change: Settings) -> Settings:
    return change if settings["encoder"] == NO_ENCODER else {}


VARIANTS: dict[str, Variant] = {
    variant.name: variant
    for variant in (
        Variant(BASELINE, lambda settings: {}),
        Variant("paper", lambda settings: {}, recipe="paper"),
        Variant("skip", _flip("skip_connections")),
        # A pretrained encoder has its own depth: then these change nothing and are left out.
        *(
            Variant(f"depth_{depth}", lambda s, d=depth: _without_encoder(s, {"depth": d}))
            for depth in (3, 4, 5)
        ),
        Variant("width_half", lambda s: {"base_channels": max(1, s["base_channels"] // 2)}),
        Variant("width_double", lambda s: {"base_channels": s["base_channels"] * 2}),
        Variant("batch_norm", _flip("batch_norm")),
        Variant("upsampling", _other("upsampling", UPSAMPLING_MODES)),
        Variant("loss", lambda s: {"loss": WITH_DICE.get(s["loss"], "bce_dice")}),
        *(
            Variant(f"augment_{level}", lambda _, a=level: {"augment": a})
            for level in AUGMENTATIONS
        ),
        Variant(
            "encoder",
            lambda s: {"encoder": STUDY_ENCODER if s["encoder"] == NO_ENCODER else NO_ENCODER},
            in_all=False,
        ),
        Variant("ema", lambda s: {"ema_decay": 0.0 if s["ema_decay"] else EMA_DECAY}),
        Variant(
            "optimisation",
            lambda _: {key: RECIPES["paper"].settings()[key] for key in OPTIMISATION},
        ),
    )
}


def _describe(baseline: Recipe, config: Recipe) -> str:
    before, after = baseline.settings(), config.settings()
    changed = [
        f"{name} {before[name]} → {after[name]}" for name in before if before[name] != after[name]
    ]
    return "; ".join(changed)


def plan_variants(
    selection: str, recipe: str, overrides: Mapping[str, Any]
) -> list[PlannedVariant]:
    """The selected variants (comma-separated names, `all` among them or alone) as settings,
    baseline first.

    The study's `overrides` (its budget, batch size, width) apply to every variant, including
    one that starts from another recipe, so all are trained on the same budget.
    """
    baseline = resolve_recipe(recipe, overrides)
    names = _names(selection)
    if BASELINE not in names:
        names.insert(0, BASELINE)
    planned = []
    for name in names:
        variant = VARIANTS[name]
        start = baseline if variant.recipe is None else resolve_recipe(variant.recipe, overrides)
        config = with_settings(start, variant.change(start.settings()))
        if name != BASELINE and config == baseline:
            continue
        description = "the study's baseline" if name == BASELINE else _describe(baseline, config)
        if variant.recipe:
            description = f"recipe {variant.recipe} at the same budget: {description}"
        planned.append(PlannedVariant(name, variant.recipe or recipe, config, description))
    return planned


def _names(selection: str) -> list[str]:
    names = []
    for name in (part.strip() for part in selection.split(",")):
        if name == ALL:
            names += [variant.name for variant in VARIANTS.values() if variant.in_all]
        elif name:
            names.append(name)
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise PipelineError(
            f"parameter variants={selection!r} names no known variant ({', '.join(unknown)}); "
            f"use {ALL} or some of: {', '.join(VARIANTS)} ({ALL} is every one but "
            f"{', '.join(_named_only())})"
        )
    return list(dict.fromkeys(names))


def _named_only() -> list[str]:
    return [variant.name for variant in VARIANTS.values() if not variant.in_all]


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise PipelineError(
            f"parameter seeds={text!r} is not a comma-separated list of integers"
        ) from None
    if not seeds:
        raise PipelineError("parameter seeds is empty: give at least one seed, e.g. 42")
    return list(dict.fromkeys(seeds))
