"""Training recipes: every setting that decides how a model is trained, under one name.

`paper` is the reference lab report, setting for setting (plain U-Net, BCE, Adam at 1e-5,
batch 4, plateau schedule). `default` is what the architecture study (`ablate`) supports:
batch normalisation, BCE + Dice, on-the-fly augmentation, and AdamW with a one-cycle
schedule. A run names its recipe and may override single settings; what it resolves to is
logged in full.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import PipelineError
from pipeline.model.unet import UPSAMPLING_MODES

LOSSES = ("bce", "bce_dice")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("plateau", "onecycle")


@dataclass(frozen=True)
class TrainingSettings:
    """The settings a recipe fixes; train and main params of the same names override them."""

    base_channels: int
    depth: int
    batch_norm: bool
    skip_connections: bool
    upsampling: str
    loss: str
    augment: bool
    optimizer: str
    lr: float
    weight_decay: float
    schedule: str
    batch_size: int
    max_epochs: int
    patience: int

    def __post_init__(self) -> None:
        choices = {
            "upsampling": UPSAMPLING_MODES,
            "loss": LOSSES,
            "optimizer": OPTIMIZERS,
            "schedule": SCHEDULES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise PipelineError(
                    f"parameter {name}={getattr(self, name)!r} is not one of {', '.join(allowed)}"
                )
        for name in ("base_channels", "depth", "batch_size", "max_epochs", "patience"):
            if getattr(self, name) < 1:
                raise PipelineError(f"parameter {name}={getattr(self, name)} must be at least 1")
        if self.lr <= 0 or self.weight_decay < 0:
            raise PipelineError(
                f"parameters lr={self.lr} and weight_decay={self.weight_decay} must be > 0 and >= 0"
            )

    def module_options(self) -> dict[str, Any]:
        """What the LightningModule takes: all but the data's batch size and augmentation and
        the loop's stopping."""
        loop = {"batch_size", "augment", "max_epochs", "patience"}
        return {key: value for key, value in dataclasses.asdict(self).items() if key not in loop}


PAPER = TrainingSettings(
    base_channels=64,
    depth=4,
    batch_norm=False,
    skip_connections=True,
    upsampling="transposed",
    loss="bce",
    augment=False,
    optimizer="adam",
    lr=1e-5,
    weight_decay=0.0,
    schedule="plateau",
    batch_size=4,
    max_epochs=100,
    patience=15,
)
# The same network and budget; what changes is what the study and common practice support.
DEFAULT = dataclasses.replace(
    PAPER,
    batch_norm=True,
    loss="bce_dice",
    augment=True,
    optimizer="adamw",
    lr=1e-3,
    weight_decay=1e-4,
    schedule="onecycle",
    batch_size=8,
    patience=25,
)
RECIPES: dict[str, TrainingSettings] = {"paper": PAPER, "default": DEFAULT}
SETTING_NAMES = tuple(field.name for field in dataclasses.fields(TrainingSettings))


def resolve_settings(recipe: str, overrides: Mapping[str, Any]) -> TrainingSettings:
    """The recipe's settings with every setting in `overrides` that is not None in its place;
    other keys are ignored, so a whole params dict can be passed."""
    if recipe not in RECIPES:
        raise PipelineError(f"parameter recipe={recipe!r} is not one of {', '.join(RECIPES)}")
    given = {name: overrides[name] for name in SETTING_NAMES if overrides.get(name) is not None}
    return dataclasses.replace(RECIPES[recipe], **given)
