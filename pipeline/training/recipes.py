"""Training recipes: every setting that decides how a model is trained, under one name.

A recipe nests the network's config and the optimisation's, and holds the loss, the
augmentation and the loop's budget itself; each setting is declared once, in the config it
belongs to, and the train, main and ablate parameters are derived from these declarations.

`paper` is the reference lab report, setting for setting (plain U-Net, BCE, Adam at 1e-5,
batch 4, plateau schedule). `default` is what the architecture study (`ablate`) supports:
batch normalisation, BCE + Dice, light on-the-fly augmentation, and AdamW with a one-cycle
schedule. A run names its recipe and may override single settings; what it resolves to is
logged in full.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.data.augment import AUGMENTATIONS, LIGHT, NONE
from pipeline.errors import PipelineError
from pipeline.model.unet import NetworkConfig
from pipeline.settings import check_settings, flat_settings, one_of, setting, with_settings
from pipeline.training.losses import LOSSES, loss_help
from pipeline.training.optimization import OptimizationConfig


@dataclass(frozen=True)
class Recipe:
    """The settings a recipe fixes; train and main params of the same names override them.
    The defaults are the reference report's."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    loss: str = setting(
        "bce",
        loss_help(),
        choices=tuple(LOSSES),
        search=one_of(
            *LOSSES,
            why="every loss of training/losses.py; the study's loss variant adds Dice to BCE",
        ),
    )
    augment: str = setting(
        NONE,
        "on-the-fly augmentation: none; light (flips, crops that keep the whole person, mild "
        "colour); strong (flips, any crop down to 0.4 of the area, strong colour, some greyscale)",
        choices=AUGMENTATIONS,
        search=one_of(
            *AUGMENTATIONS, why="the study's three levels; on real photos the best is not known"
        ),
    )
    ema_decay: float = setting(
        0.0,
        "weight EMA: decay per step of an exponential moving average of the weights, which "
        "validation, checkpoints and the logged model use (e.g. 0.999); 0 = none",
        minimum=0,
        below=1,
        search=one_of(
            0.0,
            0.999,
            why="off, or the decay of Polyak averaging common in segmentation (timm's ModelEma); "
            "the study found it neutral on generated data",
        ),
    )
    batch_size: int = setting(
        4,
        "images per step on each device; the global batch is batch_size x devices x num_nodes",
        minimum=1,
    )
    max_epochs: int = setting(100, "upper bound on epochs", minimum=1)
    patience: int = setting(15, "epochs without val Dice gain before stop", minimum=1)

    def __post_init__(self) -> None:
        check_settings(self)

    def settings(self) -> dict[str, Any]:
        """Every setting by its parameter name, the nested configs' too."""
        return flat_settings(self)


PAPER = Recipe()
# The same network and budget; what changes is what the study and common practice support.
DEFAULT = with_settings(
    PAPER,
    {
        "batch_norm": True,
        "loss": "bce_dice",
        "augment": LIGHT,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "schedule": "onecycle",
        "batch_size": 8,
        "patience": 25,
    },
)
RECIPES: dict[str, Recipe] = {"paper": PAPER, "default": DEFAULT}


def resolve_recipe(name: str, overrides: Mapping[str, Any]) -> Recipe:
    """Recipe `name` with each setting in `overrides` that is not None in its place; a name
    that is no setting is an error."""
    if name not in RECIPES:
        raise PipelineError(f"parameter recipe={name!r} is not one of {', '.join(RECIPES)}")
    given = {key: value for key, value in overrides.items() if value is not None}
    return with_settings(RECIPES[name], given)
