"""Params classes nest the configs they carry; the command line, the MLproject and the run's
params see one flat parameter per field or setting, and back again without loss."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import pytest

from pipeline.entrypoints import entry_points
from pipeline.errors import PipelineError
from pipeline.params import (
    DataSourceParams,
    built,
    flat_values,
    parameter,
    parameters,
    parse,
)
from pipeline.settings import about
from pipeline.training.recipes import RECIPES
from pipeline.training_params import TRIAL_EPOCHS, MainParams, TrainParams, TuneParams

PARAMS = {
    name: importlib.import_module(f"pipeline.entrypoints.{name}").PARAMS for name in entry_points()
}


@pytest.mark.parametrize("entry_point", sorted(PARAMS))
def test_flat_values_build_the_same_params(entry_point: str) -> None:
    params_class = PARAMS[entry_point]
    argv = [
        word
        for found in parameters(params_class)
        if found.required
        for word in (f"--{found.name}", "something")
    ]
    params = parse(params_class, argv)
    assert built(params_class, flat_values(params)) == params
    assert list(flat_values(params)) == [found.name for found in parameters(params_class)]


def test_a_nested_setting_is_read_and_written_by_its_flat_name() -> None:
    main = parse(MainParams, ["--lr", "3e-4", "--devices", "2", "--source", "synthetic:9"])
    assert main.training.changes == {"lr": 3e-4}  # only what was given overrides the recipe
    assert main.training.recipe_config().optimization.lr == 3e-4
    assert (main.runtime.devices, main.data.source) == ("2", "synthetic:9")
    flat = flat_values(main)
    assert (flat["lr"], flat["devices"], flat["source"], flat["augment"]) == (
        3e-4,
        "2",
        "synthetic:9",
        None,  # not given: the recipe's
    )


def test_each_part_checks_itself_when_built() -> None:
    with pytest.raises(PipelineError, match=r"lr=0\.0 must be more than 0"):
        built(TrainParams, {"lr": 0.0})
    with pytest.raises(PipelineError, match="accelerator='abacus' is not one of"):
        built(TrainParams, {"accelerator": "abacus"})
    with pytest.raises(PipelineError, match="image_size"):
        built(MainParams, {"image_size": 0})


def test_trials_train_fewer_epochs_unless_told() -> None:
    recipe_epochs = RECIPES["default"].max_epochs
    assert recipe_epochs != TRIAL_EPOCHS
    assert parse(TuneParams, []).training.recipe_config().max_epochs == TRIAL_EPOCHS
    assert parse(TuneParams, ["--max_epochs", "3"]).training.recipe_config().max_epochs == 3
    assert parse(TuneParams, ["--max_epochs", ""]).training.recipe_config().max_epochs == (
        recipe_epochs
    )
    assert parameter(TuneParams, "max_epochs").default == TRIAL_EPOCHS
    assert "epochs of each trial" in parameter(TuneParams, "max_epochs").help
    assert parameter(MainParams, "max_epochs").default is None


def test_a_name_declared_twice_in_one_nest_is_a_declaration_error() -> None:
    @dataclass(frozen=True)
    class Clashing:
        data: DataSourceParams = field(default_factory=DataSourceParams)
        source: str = field(default="x", metadata=about("a second source"))

    with pytest.raises(TypeError, match="Clashing declares source more than once"):
        parameters(Clashing)
