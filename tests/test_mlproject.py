"""The MLproject holds every command; the params classes add types. The two must agree."""

from __future__ import annotations

import dataclasses
import importlib
import re
import shlex
import typing

import pytest
from mlflow.projects import _project_spec

from pipeline.entrypoints import command_modules, entry_points, mlproject
from pipeline.errors import PipelineError
from pipeline.orchestration.project import MLPROJECT, project_dir, step_command
from pipeline.params import built, convert, flat_values, parameters
from pipeline.training.runtime import RuntimeConfig
from pipeline.training_params import AblateParams, MainParams, TrainingParams, TrainParams

PARAMS = {
    name: importlib.import_module(f"pipeline.entrypoints.{name}").PARAMS for name in entry_points()
}
MLPROJECT_TYPES = {str: "string", int: "int", float: "float", bool: "string"}


@pytest.fixture(scope="module")
def project():
    return _project_spec.load_project(str(project_dir()))


def test_every_entry_point_has_a_params_class(project) -> None:
    assert set(project._entry_points) == set(PARAMS)
    assert {"main", "train", "tune", "promote"} <= set(PARAMS)
    assert all(dataclasses.is_dataclass(params_class) for params_class in PARAMS.values())


def test_the_committed_files_are_what_the_declarations_give() -> None:
    """A setting, parameter or entry point added in the code reaches the MLproject and the
    parameters page only by `python -m pipeline mlproject`: forgetting to run it fails here."""
    assert (project_dir() / MLPROJECT).read_text() == mlproject.mlproject_text()
    assert (project_dir() / mlproject.REFERENCE).read_text() == mlproject.reference_text()
    assert mlproject.main(["--check", "true"]) == 0


def test_the_parameters_page_holds_every_parameter_with_its_help() -> None:
    page = mlproject.reference_text()
    for name, params_class in PARAMS.items():
        section = page.split(f"## `{name}`")[1].split("\n## ")[0]
        for found in parameters(params_class):
            assert f"| `{found.name}` |" in section and found.help in section, found.name


def test_mlproject_check_names_a_stale_file_and_what_to_run(tmp_path, monkeypatch, capsys) -> None:
    stale = mlproject.mlproject_text().replace("--seed {seed}", "", 1)
    (tmp_path / MLPROJECT).write_text(stale)
    (tmp_path / "docs").mkdir()
    monkeypatch.setattr(mlproject, "project_dir", lambda: tmp_path)
    assert mlproject.main(["--check", "true"]) == 1
    assert f"{tmp_path / MLPROJECT} is not what" in capsys.readouterr().err
    assert mlproject.main([]) == 0
    assert (tmp_path / MLPROJECT).read_text() == mlproject.mlproject_text()
    assert (tmp_path / mlproject.REFERENCE).read_text() == mlproject.reference_text()


def test_every_module_of_the_folder_is_a_command_named_as_its_file() -> None:
    modules = {module.name: module for module in command_modules()}
    files = {path.stem for path in (project_dir() / "pipeline" / "entrypoints").glob("*.py")}
    assert set(modules) == files - {"__init__", "runner"}
    assert not modules["history"].in_mlproject and not modules["mlproject"].in_mlproject
    for name in modules:
        assert callable(importlib.import_module(f"pipeline.entrypoints.{name}").main), name


@pytest.mark.parametrize("entry_point", sorted(PARAMS))
def test_step_commands_are_the_ones_mlflow_computes(project, entry_point: str, tmp_path) -> None:
    """step_command fills the MLproject's template itself; MLflow's loader must agree, with
    values that need quoting, and with every default."""
    found = parameters(PARAMS[entry_point])
    given = {each.name: f"it's {each.name} 1e-5" for each in found}
    required = {each.name: "x y" for each in found if each.required}
    for params in (given, required):
        expected = project.get_entry_point(entry_point).compute_command(params, str(tmp_path))
        assert step_command(entry_point, params) == expected


@pytest.mark.parametrize("entry_point", sorted(PARAMS))
def test_parameters_agree_in_name_type_and_default(project, entry_point: str) -> None:
    declared = project.get_entry_point(entry_point).parameters
    params_class = PARAMS[entry_point]
    found = {each.name: each for each in parameters(params_class)}
    assert set(declared) == set(found)
    for name, parameter in declared.items():
        # An optional setting (int | None) is a string whose empty value means "the recipe's".
        kind = found[name].kind
        optional = type(None) in typing.get_args(kind)
        assert parameter.type == ("string" if optional else MLPROJECT_TYPES[kind]), name
        if found[name].required:
            assert parameter.default is None, f"{name} is required in the class only"
        else:
            assert convert(params_class, name, parameter.default) == found[name].default, name


@pytest.mark.parametrize("entry_point", sorted(PARAMS))
def test_command_passes_every_parameter_once_to_its_module(project, entry_point: str) -> None:
    command = project.get_entry_point(entry_point).command
    assert command.startswith(f"python -m pipeline {entry_point} ")
    for name in project.get_entry_point(entry_point).parameters:
        assert len(re.findall(rf"--{name} \{{{name}\}}", command)) == 1, name


def test_computed_command_quotes_values() -> None:
    command = step_command("download", {"source": "my data/folder with spaces"})
    assert shlex.split(command)[4:6] == ["--source", "my data/folder with spaces"]


def test_computed_command_refuses_a_missing_or_unknown_parameter() -> None:
    with pytest.raises(PipelineError, match="evaluate needs parameter model_uri"):
        step_command("evaluate", {})
    with pytest.raises(PipelineError, match="evaluate has no parameter modle_uri"):
        step_command("evaluate", {"model_uri": "runs:/x/model", "modle_uri": "y"})


def test_project_runs_in_the_trainer_image(project) -> None:
    assert project.docker_env["image"].startswith("unet-person-trainer")


def test_main_accepts_every_setting_train_does_and_passes_it_on() -> None:
    """`main --augment false` was refused: main offered 8 of train's settings."""
    from pipeline.orchestration.workflow import PreparedData, train_params

    main_fields = {found.name: found.default for found in parameters(MainParams)}
    train_fields = {found.name: found.default for found in parameters(TrainParams)}
    assert set(train_fields) - set(main_fields) == {"data_dir"}  # main makes the data itself
    for name, default in train_fields.items():
        assert name == "data_dir" or main_fields[name] == default, name

    changed = {
        "recipe": "paper", "max_epochs": 3, "batch_size": 2, "lr": 0.003, "weight_decay": 0.1,
        "optimizer": "adam", "schedule": "plateau", "loss": "bce", "augment": "strong",
        "base_channels": 4, "depth": 2, "batch_norm": True, "skip_connections": False,
        "upsampling": "bilinear", "encoder": "resnet18", "patience": 9, "seed": 7,
        "gradient_clip": 0.5,
        "grid_every": 2, "onnx": False,
        "max_time": "00:00:01:00", **RUNTIME_CHANGED,
    }  # fmt: skip
    main = built(MainParams, changed)
    step = train_params(PreparedData("cache", "digest"), main.runtime, main.training)
    passed = {name: flat_values(step)[name] for name in changed}
    assert passed == changed


def test_main_passes_its_data_and_promotion_params_to_their_steps() -> None:
    """Each is declared same_as the step's own parameter, and reaches it under that name."""
    from pipeline.params import DownloadParams, PreprocessParams, PromoteParams, passed_on

    main = built(MainParams, dict(
        source="synthetic:7", image_size=32, val_fraction=0.2, test_fraction=0.1, split_seed=3,
        strict=True, max_pixels=1000, log_data=False, model_name="m", alias="a",
        min_improvement=0.01, min_dice=0.2,
    ))  # fmt: skip
    download = passed_on(main.data, DownloadParams, output_dir="raw")
    assert (download.source, download.output_dir, download.log_data) == (
        "synthetic:7",
        "raw",
        False,
    )
    preprocess = passed_on(main.data, PreprocessParams, raw_dir="raw")
    assert dataclasses.astuple(preprocess) == (
        "raw",
        main.data.processed_dir,
        "arrays",
        32,
        0.2,
        0.1,
        3,
        True,
        0,
        True,
        1000,
    )  # num_workers and log_data: the step's own defaults unless given
    promote = passed_on(main, PromoteParams, model_uri="runs:/x/model")
    assert (promote.model_name, promote.alias, promote.min_improvement, promote.min_dice) == (
        "m", "a", 0.01, 0.2
    )  # fmt: skip


# Where and how each train step runs: main and ablate pass all of it on.
RUNTIME_CHANGED = {
    "precision": "bf16-mixed", "accelerator": "gpu", "devices": "0,1", "num_nodes": 2,
    "strategy": "ddp", "channels_last": "false", "compile": "max-autotune",
    "cudnn_benchmark": "false", "num_workers": 3, "cache_size": "500MB", "checkpoint_every": 7,
}  # fmt: skip


def test_ablate_passes_every_runtime_setting_to_its_train_steps() -> None:
    from pipeline.orchestration.workflow import PreparedData, train_params

    runtime = {found.name for found in parameters(RuntimeConfig)}
    assert set(RUNTIME_CHANGED) | {"max_time", "checkpoint_dir"} == runtime
    ablate = built(AblateParams, RUNTIME_CHANGED)
    step = train_params(PreparedData("cache", "digest"), ablate.runtime, TrainingParams("paper"))
    assert {name: flat_values(step)[name] for name in RUNTIME_CHANGED} == RUNTIME_CHANGED
