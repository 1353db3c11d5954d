"""The command line a person meets first: `python -m pipeline --help` and each entry point's
`--help` say what there is, in words, with every parameter's default."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from pipeline.__main__ import main
from pipeline.entrypoints import command_modules
from pipeline.orchestration.project import project_dir
from pipeline.params import parameters

COMMANDS = [module.name for module in command_modules()]


def test_help_lists_every_entry_point_with_a_line_and_exits_0() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True,
        cwd=project_dir(), timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for entry_point in COMMANDS:
        (line,) = [line for line in lines if line.split()[:1] == [entry_point]]
        assert len(line.split()) > 3, line  # a description, not just the name


def test_an_unknown_entry_point_is_named_and_refused(capsys) -> None:
    assert main(["trian"]) == 2
    error = capsys.readouterr().err
    assert "unknown entry point 'trian' (did you mean train?)" in error
    assert "train" in error


@pytest.mark.parametrize("entry_point", COMMANDS)
def test_entry_point_help_describes_it_and_every_parameter(entry_point: str, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([entry_point, "--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m pipeline {entry_point} ")
    description = text.split("\n\n")[1]
    assert "Params(" not in description and len(description.split()) >= 8, description
    options = " ".join(text.split("options:")[1].split())  # argparse wraps help lines
    params_class = importlib.import_module(f"pipeline.entrypoints.{entry_point}").PARAMS
    for found in parameters(params_class):
        assert f"--{found.name} {found.name.upper()} " in options, found.name
        after = options.split(f"--{found.name} {found.name.upper()} ")[1].split(" --")[0]
        assert "(default: " in after or "(required)" in after, (found.name, after)
        assert len(after.split()) >= 4, (found.name, after)  # words beyond the default


@pytest.mark.parametrize(
    ("argument", "line"),
    [
        ("--epochs", "main: error: unrecognized argument --epochs: did you mean --max_epochs?"),
        (
            "--batchsize",
            "main: error: unrecognized argument --batchsize: did you mean --batch_size?",
        ),
        ("--zzz", "main: error: unrecognized argument --zzz; --help lists the parameters"),
    ],
)
def test_an_unknown_parameter_is_one_line_with_the_nearest_name(
    argument: str, line: str, capsys
) -> None:
    """It was argparse's 34 lines of usage; no run opens either way."""
    from mlflow.tracking import MlflowClient

    assert main(["main", argument, "3"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [line]
    experiment = MlflowClient().get_experiment_by_name("unet-person")
    assert experiment is None or not MlflowClient().search_runs([experiment.experiment_id])


def test_main_help_groups_its_parameters_data_first(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["main", "--help"])
    text = capsys.readouterr().out
    titles = [line for line in text.splitlines() if line and not line[0].isspace()]
    groups = [title for title in titles if title.endswith(":") and title != "options:"]
    assert [title.split(":")[0] for title in groups] == [
        "data",
        "recipe and network",
        "training runtime",
        "steps, tracking and promotion",
    ]
    data = text.split(groups[0])[1].split(groups[1])[0]
    assert "--source" in data and "--image_size" in data and "--lr" not in data


def test_help_shows_what_each_recipe_gives_a_setting_left_empty(capsys) -> None:
    """Not "the recipe's": the number, and which recipe gives it (the default one first)."""
    from pipeline.params import text_of
    from pipeline.training.recipes import RECIPES

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    options = " ".join(capsys.readouterr().out.split())
    default_lr = text_of(RECIPES["default"].optimization.lr)
    paper_lr = text_of(RECIPES["paper"].optimization.lr)
    assert default_lr != paper_lr
    assert f"(default: {default_lr} in recipe default, {paper_lr} in paper; empty:" in options
    assert f"(default: {RECIPES['paper'].max_epochs} in every recipe; empty:" in options
