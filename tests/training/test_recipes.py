"""Recipes: `paper` is the reference report's settings; params override single settings."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.errors import PipelineError
from pipeline.params import TrainParams, parse
from pipeline.training.recipes import RECIPES, SETTING_NAMES, resolve_settings


def test_paper_is_the_reference_lab_report() -> None:
    # ../shared/NOTES.md: plain U-Net, BCEWithLogits, Adam lr 1e-5, batch 4, ReduceLROnPlateau,
    # early stop on val Dice patience 15, max 100 epochs.
    paper = RECIPES["paper"]
    assert (paper.base_channels, paper.depth) == (64, 4)
    assert (paper.batch_norm, paper.skip_connections, paper.upsampling) == (
        False,
        True,
        "transposed",
    )
    assert (paper.loss, paper.augment) == ("bce", False)
    assert (paper.optimizer, paper.lr, paper.weight_decay, paper.schedule) == (
        "adam",
        1e-5,
        0.0,
        "plateau",
    )
    assert (paper.batch_size, paper.max_epochs, paper.patience) == (4, 100, 15)


def test_default_is_what_the_study_supports() -> None:
    default = RECIPES["default"]
    assert default.batch_norm and default.augment and default.skip_connections
    assert (default.loss, default.optimizer, default.schedule) == ("bce_dice", "adamw", "onecycle")
    assert default.weight_decay > 0


def test_params_with_no_settings_resolve_to_the_recipe() -> None:
    params = parse(TrainParams, [])
    assert params.recipe == "default"
    assert all(getattr(params, name) is None for name in SETTING_NAMES)
    for recipe, settings in RECIPES.items():
        assert resolve_settings(recipe, dataclasses.asdict(params)) == settings


def test_given_settings_override_the_recipe_and_only_those() -> None:
    params = parse(
        TrainParams,
        ["--recipe", "paper", "--lr", "3e-4", "--batch_norm", "true", "--max_epochs", "7"],
    )
    settings = resolve_settings(params.recipe, dataclasses.asdict(params))
    assert (settings.lr, settings.batch_norm, settings.max_epochs) == (3e-4, True, 7)
    assert (
        dataclasses.replace(settings, lr=1e-5, batch_norm=False, max_epochs=100) == RECIPES["paper"]
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss": "focal"}, "parameter loss='focal' is not one of bce, bce_dice"),
        ({"upsampling": "nearest"}, "parameter upsampling='nearest' is not one of"),
        ({"optimizer": "sgd"}, "parameter optimizer='sgd' is not one of adam, adamw"),
        ({"schedule": "step"}, "parameter schedule='step' is not one of plateau, onecycle"),
        ({"depth": 0}, "parameter depth=0 must be at least 1"),
        ({"batch_size": 0}, "parameter batch_size=0 must be at least 1"),
        ({"lr": 0.0}, "lr=0.0 and weight_decay=0.0001 must be > 0 and >= 0"),
    ],
)
def test_bad_settings_name_the_parameter(overrides: dict, message: str) -> None:
    with pytest.raises(PipelineError, match=message.replace("(", r"\(")):
        resolve_settings("default", overrides)


def test_an_unknown_recipe_names_the_known_ones() -> None:
    with pytest.raises(PipelineError, match="recipe='fast' is not one of paper, default"):
        resolve_settings("fast", {})


def test_an_empty_setting_on_the_command_line_means_the_recipe() -> None:
    params = parse(TrainParams, ["--lr", "", "--augment", ""])
    assert params.lr is None and params.augment is None
    with pytest.raises(PipelineError, match="parameter augment='maybe' is not a boolean"):
        parse(TrainParams, ["--augment", "maybe"])
