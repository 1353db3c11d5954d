"""Where runs go, how a step joins the run `mlflow run` made, failing fast without tracking."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
from mlflow.projects._project_spec import EntryPoint
from mlflow.tracking import MlflowClient

from pipeline.entrypoints.runner import run_entry_point, step_run
from pipeline.errors import TRACKING_AWAY_EXIT, PipelineError
from pipeline.params import (
    DownloadParams,
    EvaluateParams,
    ExportParams,
    PredictParams,
    PreprocessParams,
    PromoteParams,
    parse,
)
from pipeline.tracking.runs import (
    DEFAULT_EXPERIMENT,
    configure_tracking,
    mark_as_model_training,
    tracking_uri,
)
from pipeline.tracking.tags import CODE_TAG, ENTRY_POINT_TAG, ERROR_TAG
from pipeline.training_params import AblateParams, MainParams, TrainParams
from tests.conftest import free_port


def test_default_store_is_sqlite_in_the_working_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert configure_tracking() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    with step_run("download", DownloadParams()) as run:
        pass
    assert (tmp_path / "mlflow.db").is_file()
    experiment = MlflowClient().get_experiment(run.info.experiment_id)
    assert experiment.name == DEFAULT_EXPERIMENT
    # The UI opens it in "Model training" mode, not the GenAI view.
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_experiment_kind_chosen_by_someone_is_kept(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "chosen")
    experiment_id = mlflow.set_experiment("chosen").experiment_id
    MlflowClient().set_experiment_tag(experiment_id, "mlflow.experimentKind", "finetuning")
    with step_run("download", DownloadParams()):
        pass
    tags = MlflowClient().get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "finetuning"


def test_steps_starting_at_once_on_a_fresh_experiment_all_tag_its_kind() -> None:
    """Four steps (concurrent promotes, say) find the kind missing and all write it: on SQLite
    one in three such rounds had a step fail on the tag's primary key before the retry."""
    client = MlflowClient()
    for round_ in range(10):
        experiment_id = client.create_experiment(f"fresh-{round_}")
        all_checked = threading.Barrier(4)

        def mark(experiment_id: str = experiment_id, barrier=all_checked) -> None:
            barrier.wait(timeout=30)
            mark_as_model_training(MlflowClient(), experiment_id)

        with ThreadPoolExecutor(4) as pool:
            for started in [pool.submit(mark) for _ in range(4)]:
                started.result()  # raises what the step would have died of
        tags = client.get_experiment(experiment_id).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_experiment_name_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "people-study")
    mlflow.set_experiment("people-study")
    with step_run("download", DownloadParams()) as run:
        pass
    assert MlflowClient().get_experiment(run.info.experiment_id).name == "people-study"


def test_step_logs_into_the_run_named_by_mlflow_run_id(monkeypatch) -> None:
    configure_tracking()
    client = MlflowClient()
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    created = client.create_run(experiment.experiment_id, tags={ENTRY_POINT_TAG: "train"})
    # `mlflow run` logs the MLproject's spelling of every parameter before the step starts,
    # quoted for the shell as in the command it runs: an empty value (the recipe's) as `''`.
    given = {"lr": "1e-5", "max_epochs": "100", "batch_size": "", "data_dir": "my data/split"}
    for name, value in EntryPoint._sanitize_value_dict(given).items():
        client.log_param(created.info.run_id, name, value)
    monkeypatch.setenv("MLFLOW_RUN_ID", created.info.run_id)
    argv = ["--lr", "0.00001", "--max_epochs", "100", "--data_dir", "my data/split"]
    with step_run("train", parse(TrainParams, argv)) as run:
        assert run.info.run_id == created.info.run_id
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [created.info.run_id]
    finished = client.get_run(created.info.run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.params["lr"] == "1e-5"  # equal value, left in its own spelling
    assert finished.data.params["batch_size"] == "''"
    assert finished.data.params["seed"] == "42"  # not logged before: the step added it
    assert finished.data.tags[CODE_TAG]


def test_a_different_value_for_a_logged_parameter_is_refused(monkeypatch) -> None:
    configure_tracking()
    client = MlflowClient()
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    created = client.create_run(experiment.experiment_id)
    client.log_param(created.info.run_id, "lr", "2e-5")
    monkeypatch.setenv("MLFLOW_RUN_ID", created.info.run_id)
    expected = r"lr: run has '2e-5', step got 1e-05"
    params = parse(TrainParams, ["--lr", "1e-5"])
    with pytest.raises(PipelineError, match=expected), step_run("train", params):
        pass


def test_a_pipeline_error_is_one_line_exit_2_and_a_failed_tagged_run(capsys) -> None:
    def broken(params) -> None:
        raise PipelineError("image images/x.png is unreadable")

    assert run_entry_point("download", DownloadParams, broken, []) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line == "download: error: image images/x.png is unreadable"
    (run,) = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id]
    )
    assert run.info.status == "FAILED"
    assert run.data.tags[ERROR_TAG] == "image images/x.png is unreadable"


def test_a_bad_parameter_value_names_the_parameter(capsys) -> None:
    assert run_entry_point("train", TrainParams, lambda params: None, ["--lr", "fast"]) == 2
    assert "parameter lr='fast' is not a valid float" in capsys.readouterr().err


def test_unreachable_tracking_server_fails_fast_before_any_work(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "download",
            "--source",
            "synthetic:3",
            "--output_dir",
            str(tmp_path / "raw"),
        ],
        env={**os.environ, "MLFLOW_TRACKING_URI": url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == TRACKING_AWAY_EXIT  # come back later, not a bad input
    assert f"cannot reach the MLflow tracking server at {url}" in result.stderr
    assert "MLFLOW_TRACKING_URI" in result.stderr
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize(
    ("entry_point", "argv", "message"),
    [
        ("train", ["--precision", "16"], "parameter precision='16' is not one of auto, 32-true"),
        ("train", ["--accelerator", "gpus"], "parameter accelerator='gpus' is not one of auto"),
        ("train", ["--max_time", "2h"], "parameter max_time='2h' is not DD:HH:MM:SS"),
        ("train", ["--devices", "0;1"], "parameter devices='0;1' is not auto, a count"),
        ("train", ["--recipe", "foo"], "parameter recipe='foo' is not one of paper, default"),
        ("train", ["--loss", "l2"], "parameter loss='l2' is not one of bce, bce_dice"),
        ("main", ["--recipe", "foo"], "parameter recipe='foo' is not one of paper, default"),
        ("main", ["--max_time", "soon"], "parameter max_time='soon' is not DD:HH:MM:SS"),
        ("ablate", ["--variants", "nope"], "nope"),
    ],
)
def test_bad_parameters_stop_before_any_run_or_work(
    entry_point: str, argv: list[str], message: str, tmp_path: Path, capsys
) -> None:
    """Before the fix these ran download and preprocess (main) or opened a run that then failed
    with a Lightning traceback (train)."""
    module = importlib.import_module(f"pipeline.entrypoints.{entry_point}")
    assert module.main([*argv, "--source", "synthetic:3"] if entry_point != "train" else argv) == 2
    error = capsys.readouterr().err
    assert message in error
    assert "Traceback" not in error
    assert not (tmp_path / "mlflow.db").exists()  # no run was opened, not even a failed one
    assert not (tmp_path / "data").exists()


BAD_VALUES = [
    ("download", DownloadParams, ["--source", "synthetic:0"], "synthetic count must be at least 1"),
    (
        "preprocess",
        PreprocessParams,
        ["--val_fraction", "0.6", "--test_fraction", "0.5"],
        "leaves nothing to train on",
    ),
    ("train", TrainParams, ["--depth", "0"], "parameter depth=0 must be at least 1"),
    ("train", TrainParams, ["--recipe", "fast"], "recipe='fast' is not one of paper, default"),
    ("train", TrainParams, ["--max_time", "12h"], "max_time='12h' is not DD:HH:MM:SS"),
    (
        "evaluate",
        EvaluateParams,
        ["--model_uri", "runs:/x/model", "--batch_size", "0"],
        "batch_size=0 must be at least 1",
    ),
    (
        "promote",
        PromoteParams,
        ["--model_uri", "runs:/x/model", "--min_dice", "2"],
        "min_dice=2.0 must be between 0 and 1",
    ),
    (
        "predict",
        PredictParams,
        ["--input_dir", ".", "--runtime", "tensorrt"],
        "runtime='tensorrt' is not one of",
    ),
    ("export", ExportParams, ["--opset", "9"], "opset=9 is not one this exporter writes"),
    ("main", MainParams, ["--upsampling", "nearest"], "upsampling='nearest' is not one of"),
    ("main", MainParams, ["--alias", "not an alias"], "alias='not an alias' is not a usable alias"),
    ("ablate", AblateParams, ["--variants", "skip,dropout"], "names no known variant (dropout)"),
    ("ablate", AblateParams, ["--seeds", "1,x"], "seeds='1,x' is not a comma-separated list"),
]


@pytest.mark.parametrize(
    ("entry_point", "params_class", "argv", "message"),
    BAD_VALUES,
    ids=[f"{entry_point}-{argv[-2]}" for entry_point, _, argv, _ in BAD_VALUES],
)
def test_a_bad_value_is_refused_at_the_door_and_leaves_no_run(
    entry_point: str, params_class: type, argv: list[str], message: str, capsys
) -> None:
    def must_not_run(params) -> None:
        raise AssertionError("the step ran with a bad parameter")

    assert run_entry_point(entry_point, params_class, must_not_run, argv) == 2
    assert message in capsys.readouterr().err
    mlflow.set_tracking_uri(tracking_uri())
    experiment = MlflowClient().get_experiment_by_name(DEFAULT_EXPERIMENT)
    assert experiment is None or not MlflowClient().search_runs([experiment.experiment_id])
