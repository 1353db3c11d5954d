"""Recipes: `paper` is the reference report's settings; params override single settings."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipeline.errors import PipelineError
from pipeline.params import flat_values, parameters, parse, plain
from pipeline.settings import with_settings
from pipeline.training.recipes import PAPER, RECIPES, resolve_recipe
from pipeline.training_params import TrainParams


def test_paper_is_the_reference_lab_report() -> None:
    # ../shared/NOTES.md: plain U-Net, BCEWithLogits, Adam lr 1e-5, batch 4, ReduceLROnPlateau,
    # early stop on val Dice patience 15, max 100 epochs.
    paper = SimpleNamespace(**RECIPES["paper"].settings())
    assert (paper.base_channels, paper.depth) == (64, 4)
    assert (paper.batch_norm, paper.skip_connections, paper.upsampling) == (
        False,
        True,
        "transposed",
    )
    assert (paper.loss, paper.augment) == ("bce", "none")
    assert (paper.optimizer, paper.lr, paper.weight_decay, paper.schedule) == (
        "adam",
        1e-5,
        0.0,
        "plateau",
    )
    assert (paper.batch_size, paper.max_epochs, paper.patience) == (4, 100, 15)


def test_default_is_what_the_study_supports() -> None:
    default = SimpleNamespace(**RECIPES["default"].settings())
    assert default.batch_norm and default.skip_connections
    assert default.augment == "light"  # strong hurt on real photos (issue 13)
    assert (default.loss, default.optimizer, default.schedule) == ("bce_dice", "adamw", "onecycle")
    assert default.weight_decay > 0


def test_params_with_no_settings_resolve_to_the_recipe() -> None:
    params = parse(TrainParams, []).training
    assert params.recipe == "default"
    assert params.changes == {}
    assert all(flat_values(params)[name] is None for name in PAPER.settings())
    for recipe, config in RECIPES.items():
        assert parse(TrainParams, ["--recipe", recipe]).training.recipe_config() == config


def test_given_settings_override_the_recipe_and_only_those() -> None:
    params = parse(
        TrainParams,
        ["--recipe", "paper", "--lr", "3e-4", "--batch_norm", "true", "--max_epochs", "7"],
    )
    config = params.training.recipe_config()
    assert (config.optimization.lr, config.network.batch_norm, config.max_epochs) == (3e-4, True, 7)
    back = {"lr": 1e-5, "batch_norm": False, "max_epochs": 100}
    assert with_settings(config, back) == RECIPES["paper"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss": "no_such_loss"}, "parameter loss='no_such_loss' is not one of bce, bce_dice"),
        ({"upsampling": "nearest"}, "parameter upsampling='nearest' is not one of"),
        ({"optimizer": "sgd"}, "parameter optimizer='sgd' is not one of adam, adamw"),
        ({"schedule": "step"}, "parameter schedule='step' is not one of plateau, onecycle"),
        ({"augment": "maybe"}, "parameter augment='maybe' is not one of none, light, strong"),
        ({"augment": "true"}, "parameter augment='true' is not one of none, light, strong"),
        ({"depth": 0}, "parameter depth=0 must be at least 1"),
        ({"batch_size": 0}, "parameter batch_size=0 must be at least 1"),
        ({"lr": 0.0}, "parameter lr=0.0 must be more than 0"),
        ({"weight_decay": -1.0}, "parameter weight_decay=-1.0 must be at least 0"),
        ({"gradient_clip": -0.5}, "parameter gradient_clip=-0.5 must be at least 0"),
    ],
)
def test_bad_settings_name_the_parameter(overrides: dict, message: str) -> None:
    with pytest.raises(PipelineError, match=message.replace("(", r"\(")):
        resolve_recipe("default", overrides)
    (name, value), *_ = overrides.items()
    with pytest.raises(PipelineError, match=message.replace("(", r"\(")):
        parse(TrainParams, [f"--{name}", str(value)])  # at the door, before any run


def test_an_unknown_recipe_names_the_known_ones() -> None:
    with pytest.raises(PipelineError, match="recipe='fast' is not one of paper, default"):
        resolve_recipe("fast", {})


def test_a_name_that_is_no_setting_is_an_error_not_ignored() -> None:
    with pytest.raises(PipelineError, match="skip_conections: no setting of Recipe"):
        resolve_recipe("default", {"skip_conections": False})


def test_every_setting_is_a_parameter_with_the_declared_help() -> None:
    """The train params are derived from the recipe's declarations: one new setting declared
    in its config is a parameter of train and main with no other change."""
    from pipeline.settings import declared
    from pipeline.training.recipes import Recipe
    from pipeline.training_params import MainParams

    for params_class in (TrainParams, MainParams):
        found = {each.name: each for each in parameters(params_class)}
        for name, kind, spec in declared(Recipe):
            assert found[name].default is None and found[name].kind == plain(kind) | None, name
            assert found[name].help == spec.metadata["help"], name


def test_an_empty_setting_on_the_command_line_means_the_recipe() -> None:
    params = parse(TrainParams, ["--lr", "", "--augment", ""])
    assert params.training.changes == {}
    assert flat_values(params)["lr"] is None and flat_values(params)["augment"] is None
    assert parse(TrainParams, ["--augment", "strong"]).training.changes == {"augment": "strong"}
    assert parse(TrainParams, ["--augment", "strong"]).training.recipe_config().augment == "strong"


def test_gradient_clip_is_the_trainers_and_zero_turns_clipping_off() -> None:
    import lightning as L

    params = parse(TrainParams, ["--gradient_clip", "0.25"])
    arguments = params.training.recipe_config().optimization.trainer_arguments()
    assert L.Trainer(**arguments, logger=False).gradient_clip_val == 0.25
    off = resolve_recipe("default", {"gradient_clip": 0.0}).optimization.trainer_arguments()
    assert L.Trainer(**off, logger=False).gradient_clip_val is None
    assert PAPER.optimization.gradient_clip == 1.0  # what every recipe clipped at before


def test_a_field_with_help_alone_is_no_setting() -> None:
    """`about()` gives a parameter its help; only `setting()` declares a setting, whose
    bounds are checked (a help-only field made check_settings fail with KeyError 'choices')."""
    import dataclasses

    from pipeline.settings import about, check_settings, declared, setting

    @dataclasses.dataclass(frozen=True)
    class Config:
        size: int = setting(3, "a size", minimum=1)
        note: str = dataclasses.field(default="x", metadata=about("a parameter's help"))

    check_settings(Config())
    assert [name for name, _, _ in declared(Config)] == ["size"]
    with pytest.raises(PipelineError, match="parameter size=0 must be at least 1"):
        check_settings(Config(size=0))
