"""Which earlier run may stand in for a step: equal code, input, params and an intact output."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import folders
from pipeline.orchestration.reuse import (
    StepRequest,
    finished_run,
    interrupted_training,
    matching_runs,
    outputs_intact,
)
from pipeline.params import DownloadParams, as_text, built, flat_values, same_values
from pipeline.tracking.runs import configure_tracking
from pipeline.tracking.tags import INPUT_TAG, MODEL_URI_TAG, OUTPUT_DIGEST_TAG, OUTPUT_PATH_TAG
from pipeline.training_params import TrainParams


@pytest.fixture
def experiment_id() -> str:
    configure_tracking()
    return MlflowClient().get_experiment_by_name("unet-person").experiment_id


def record(experiment_id: str, request: StepRequest, status: str, params=None, **tags) -> str:
    """A run as `main` or `mlflow run` would have left it."""
    client = MlflowClient()
    run = client.create_run(experiment_id, tags={**request.identity_tags(), **tags})
    for key, value in (params or as_text(request.params)).items():
        client.log_param(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def landed_folder(tmp_path: Path, digest: str) -> Path:
    folder = tmp_path / "raw"
    folder.mkdir()
    folders.write_marker(folder, {"digest": digest})
    return folder


def test_values_compare_by_type_not_spelling() -> None:
    wanted = flat_values(built(TrainParams, {"lr": 1e-5}))
    logged = {**as_text(TrainParams()), "lr": "0.00001"}
    assert same_values(TrainParams, logged, wanted)
    assert not same_values(TrainParams, {**logged, "lr": "2e-5"}, wanted)
    assert not same_values(TrainParams, {**logged, "lr": "fast"}, wanted)
    del logged["depth"]
    assert not same_values(TrainParams, logged, wanted)
    assert same_values(
        DownloadParams,
        {**as_text(DownloadParams()), "log_data": "True"},
        dataclasses.asdict(DownloadParams()),
    )


def test_newest_match_wins_and_other_inputs_or_params_do_not_match(
    experiment_id: str, tmp_path: Path
) -> None:
    request = StepRequest("train", built(TrainParams, {"lr": 1e-5}), "data-1")
    older = record(experiment_id, request, "FINISHED", {**as_text(request.params), "lr": "1e-5"})
    newer = record(experiment_id, request, "FINISHED")
    record(
        experiment_id, StepRequest("train", built(TrainParams, {"lr": 1e-5}), "data-2"), "FINISHED"
    )
    record(
        experiment_id, StepRequest("train", built(TrainParams, {"lr": 3e-4}), "data-1"), "FINISHED"
    )
    found = matching_runs(MlflowClient(), experiment_id, request)
    assert [run.info.run_id for run in found] == [newer, older]


def test_a_run_of_other_code_does_not_match(experiment_id: str) -> None:
    request = StepRequest("download", DownloadParams(), "source-1")
    client = MlflowClient()
    run = client.create_run(
        experiment_id, tags={**request.identity_tags(), "unet_person.code_digest": "0ld"}
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    assert matching_runs(client, experiment_id, request) == []


def test_a_folder_output_counts_only_while_its_digest_holds(
    experiment_id: str, tmp_path: Path
) -> None:
    folder = landed_folder(tmp_path, "abc")
    request = StepRequest("download", DownloadParams(output_dir=str(folder)), "source-1")
    run_id = record(
        experiment_id,
        request,
        "FINISHED",
        **{OUTPUT_DIGEST_TAG: "abc", OUTPUT_PATH_TAG: str(folder)},
    )
    run = MlflowClient().get_run(run_id)
    assert outputs_intact(run)
    assert finished_run([run]).info.run_id == run_id
    folders.write_marker(folder, {"digest": "changed"})
    assert not outputs_intact(run)
    assert finished_run([run]) is None


def test_a_step_without_its_product_or_with_a_lost_model_is_not_reused(experiment_id) -> None:
    request = StepRequest("train", TrainParams(), "data-1")
    no_model = record(experiment_id, request, "FINISHED")
    lost_model = record(
        experiment_id, request, "FINISHED", **{MODEL_URI_TAG: "models:/m-doesnotexist"}
    )
    client = MlflowClient()
    assert not outputs_intact(client.get_run(no_model))
    assert not outputs_intact(client.get_run(lost_model))


def test_failed_runs_are_never_reused_but_train_resumes_from_a_checkpoint(
    experiment_id: str, tmp_path: Path
) -> None:
    folder = landed_folder(tmp_path, "abc")
    request = StepRequest("train", TrainParams(), "data-1")
    failed = record(experiment_id, request, "FAILED", **{OUTPUT_PATH_TAG: str(folder)})
    killed_without_checkpoint = record(experiment_id, request, "KILLED")
    runs = matching_runs(MlflowClient(), experiment_id, request)
    assert finished_run(runs) is None
    checkpoints = tmp_path / "checkpoints"
    assert interrupted_training(runs, checkpoints) is None
    (checkpoints / failed).mkdir(parents=True)
    (checkpoints / failed / "last.ckpt").write_bytes(b"state")
    assert interrupted_training(runs, checkpoints).info.run_id == failed
    assert killed_without_checkpoint != failed
    assert runs[0].data.tags[INPUT_TAG] == "data-1"
