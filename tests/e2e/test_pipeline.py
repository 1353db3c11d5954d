"""`main` end to end on a small synthetic set, then everything it left in MLflow.

The steps run from the MLproject's own commands (MLflow's project loader), as `mlflow run` would
run them, in this environment.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.entities import Run

from pipeline.data.cache import open_split
from pipeline.images import decode_mask, encode_png
from pipeline.model.inputs import to_model_input
from pipeline.orchestration.project import project_dir
from pipeline.tracking.models import segmenter_of
from pipeline.tracking.tags import MODEL_URI_TAG
from pipeline.training.module import SegmentationModule
from tests.conftest import isolated_environment
from tests.e2e.workspace import Workspace, children

pytestmark = pytest.mark.e2e

SETTINGS = {
    "source": "synthetic:48",
    "image_size": "32",
    "base_channels": "4",
    "depth": "2",
    "max_epochs": "4",
    "batch_size": "8",
    "lr": "1e-3",
    "num_workers": "0",
    "min_dice": "0",  # four epochs of a tiny net: let its first model take the free alias
    "onnx": "false",  # seconds per train step; the stack's main and the docker run export it
}
STEPS = ("download", "preprocess", "train", "evaluate", "promote")
REUSABLE = ("download", "preprocess", "train", "evaluate")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    folder = tmp_path_factory.mktemp("pipeline")
    return Workspace(folder, isolated_environment(folder), SETTINGS)


@pytest.fixture(scope="module")
def first_output(workspace: Workspace) -> subprocess.CompletedProcess:
    result = workspace.run("main", workspace.params())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def first_main(workspace: Workspace, first_output) -> tuple[Run, dict[str, Run]]:
    (parent,) = [run for run in workspace.runs() if "mlflow.parentRunId" not in run.data.tags]
    return parent, children(workspace, parent)


@pytest.mark.parametrize(
    "noise",
    [
        "💡 Tip",  # Lightning's advertisement for its cloud logger
        "is deprecated",  # e.g. Lightning's use of torch's LeafSpec
        "exists and is not empty",  # the checkpoint folder, the train run's own on purpose
        "Downloading artifacts",  # MLflow's bars, two per model load
    ],
)
def test_a_normal_run_prints_no_library_noise(first_output, noise: str) -> None:
    printed = first_output.stdout + first_output.stderr
    assert noise not in printed, printed[max(0, printed.find(noise) - 500) :][:1500]


@pytest.fixture(autouse=True)
def track_into_workspace(workspace: Workspace) -> None:
    mlflow.set_tracking_uri(workspace.env["MLFLOW_TRACKING_URI"])


def test_main_is_a_parent_of_five_finished_steps(first_main) -> None:
    parent, steps = first_main
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.project.entryPoint"] == "main"
    assert sorted(steps) == sorted(STEPS)
    assert all(run.info.status == "FINISHED" for run in steps.values())
    assert float(parent.data.params["lr"]) == 1e-3
    assert parent.data.metrics["test_dice"] == steps["evaluate"].data.metrics["test_dice"]
    # One row in the UI tells the story: best val Dice and the decision are on the parent too.
    assert parent.data.metrics["best_val_dice"] == steps["train"].data.metrics["best_val_dice"]
    assert parent.data.tags["unet_person.decision"] == "promoted"


def test_steps_log_their_parameters(first_main, workspace: Workspace) -> None:
    _, steps = first_main
    train = steps["train"].data.params
    assert float(train["lr"]) == 1e-3
    assert train["max_epochs"] == "4" and train["base_channels"] == "4"
    # The recipe fills in what main left empty, and the run records what it resolved to.
    assert train["recipe"] == "default" and train["loss"] == ""
    assert steps["train"].data.tags["unet_person.recipe"] == "default"
    assert float(train["resolved.lr"]) == 1e-3
    assert train["resolved.loss"] == "bce_dice" and train["resolved.batch_norm"] == "true"
    assert train["data_dir"] == str(workspace.folder / "processed")
    assert steps["download"].data.params["source"] == "synthetic:48"
    assert steps["preprocess"].data.params["image_size"] == "32"


def test_data_steps_log_counts_digests_and_datasets(first_main) -> None:
    _, steps = first_main
    download, preprocess = steps["download"], steps["preprocess"]
    assert download.data.metrics["rows"] == 48
    assert download.data.metrics["usable_rows"] == 48
    assert (
        preprocess.data.tags["unet_person.input_digest"]
        == (download.data.tags["unet_person.output_digest"])
    )
    metrics = preprocess.data.metrics
    assert metrics["train_images"] + metrics["val_images"] + metrics["test_images"] == 48
    assert 0.05 < metrics["train_foreground_fraction"] < 0.6
    contexts = {
        step: {
            tag.value
            for dataset in steps[step].inputs.dataset_inputs
            for tag in dataset.tags
            if tag.key == "mlflow.data.context"
        }
        for step in ("preprocess", "train", "evaluate")
    }
    assert contexts == {
        "preprocess": {"train", "val", "test"},
        "train": {"train", "val"},
        "evaluate": {"test"},
    }


def test_train_logs_curves_images_and_the_model(first_main, workspace: Workspace) -> None:
    _, steps = first_main
    train = steps["train"]
    client = workspace.client()
    history = {
        key: client.get_metric_history(train.info.run_id, key)
        for key in (
            "train_loss_step",
            "train_loss_epoch",
            "train_dice",
            "val_loss",
            "val_dice",
            "lr",
            "epoch_time_s",
        )
    }
    epochs = int(train.data.metrics["epochs_trained"])
    assert epochs == 4
    assert len(history["train_loss_step"]) > epochs
    for key in ("train_loss_epoch", "val_dice", "lr", "epoch_time_s"):
        assert len(history[key]) == epochs, key
    assert all(point.value > 0 for point in history["epoch_time_s"])
    assert max(point.value for point in history["val_dice"]) == pytest.approx(
        train.data.metrics["best_val_dice"]
    )
    images = [item.path for item in client.list_artifacts(train.info.run_id, "images")]
    assert any("val_predictions" in path for path in images)
    info = mlflow.models.get_model_info(train.data.tags[MODEL_URI_TAG])
    assert info.run_id == train.info.run_id
    assert info.signature is not None and info.signature.inputs is not None


def test_logged_model_computes_like_the_best_checkpoint(first_main, workspace: Workspace) -> None:
    _, steps = first_main
    train = steps["train"]
    checkpoint = workspace.folder / "checkpoints" / train.info.run_id / "best.ckpt"
    in_memory = SegmentationModule.from_checkpoint(checkpoint).eval()
    images = np.array(open_split(workspace.folder / "processed", "test")[0])
    logged = mlflow.pyfunc.load_model(train.data.tags[MODEL_URI_TAG])
    with torch.no_grad():
        expected = in_memory(to_model_input(torch.from_numpy(images).permute(0, 3, 1, 2)))
    logits = segmenter_of(logged, "train's model").logits(images)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_evaluate_reports_pooled_and_per_image_results(first_main, workspace: Workspace) -> None:
    _, steps = first_main
    evaluate = steps["evaluate"]
    metrics = evaluate.data.metrics
    images, masks = open_split(workspace.folder / "processed", "test")
    # The masks serving gives for the test photos (as PNG files) are the ones evaluate counted.
    model = mlflow.pyfunc.load_model(evaluate.data.tags["unet_person.evaluated_model"])
    photos = [base64.b64encode(encode_png(image)).decode("ascii") for image in images]
    answer = model.predict(pd.DataFrame({"image": photos}))
    predicted = torch.from_numpy(
        np.stack([decode_mask(base64.b64decode(mask)) for mask in answer["mask"]])
    )
    truth = torch.from_numpy(np.array(masks)).bool()
    tp = (predicted.bool() & truth).sum().item()
    fp = (predicted.bool() & ~truth).sum().item()
    fn = (~predicted.bool() & truth).sum().item()
    assert metrics["test_dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)
    assert metrics["test_iou"] == pytest.approx(tp / (tp + fp + fn), abs=1e-6)
    assert 0 < metrics["test_bce"] < 5
    quantiles = [metrics[f"test_image_dice_{name}"] for name in ("min", "p25", "median", "max")]
    assert quantiles == sorted(quantiles)
    client = workspace.client()
    artifacts = {item.path for item in client.list_artifacts(evaluate.info.run_id)}
    assert {"per_image.csv", "best_and_worst.png", "dice_histogram.png"} <= artifacts
    table = pd.read_csv(client.download_artifacts(evaluate.info.run_id, "per_image.csv"))
    assert len(table) == len(images)
    assert table["dice"].between(0, 1).all()


def test_main_promotes_its_model_with_evaluates_figure(first_main, workspace: Workspace) -> None:
    parent, steps = first_main
    promote, evaluate = steps["promote"], steps["evaluate"]
    version = workspace.client().get_model_version_by_alias("unet-person", "champion")
    assert str(version.version) == "1"
    assert version.source == steps["train"].data.tags[MODEL_URI_TAG]
    tags = version.tags
    assert tags["unet_person.decision"] == "promoted"
    assert tags["unet_person.promote_run_id"] == promote.info.run_id
    assert tags["unet_person.candidate_dice_from"] == evaluate.info.run_id
    assert float(tags["unet_person.candidate_dice"]) == pytest.approx(
        evaluate.data.metrics["test_dice"], abs=1e-6
    )
    assert (
        tags["unet_person.split_digest"]
        == steps["preprocess"].data.tags["unet_person.output_digest"]
    )
    assert promote.data.params["model_uri"] == steps["train"].data.tags[MODEL_URI_TAG]
    assert promote.data.params["data_dir"] == str(workspace.folder / "processed")
    assert parent.data.tags["unet_person.decision"] == "promoted"
    assert parent.data.tags["unet_person.model_version"] == "1"


def test_second_main_reuses_every_step(first_main, workspace: Workspace) -> None:
    parent, steps = first_main
    before = len(workspace.runs())
    result = workspace.run("main", workspace.params())
    assert result.returncode == 0, result.stderr[-3000:]
    runs = workspace.runs()
    # The new parent and a new promote: who holds the alias is not an input reuse can see.
    assert len(runs) == before + 2, result.stderr[-5000:]
    (second,) = [
        run
        for run in runs
        if run.info.run_id not in {parent.info.run_id, *(s.info.run_id for s in steps.values())}
        and "mlflow.parentRunId" not in run.data.tags
    ]
    for step in REUSABLE:
        assert second.data.tags[f"unet_person.reused.{step}"] == steps[step].info.run_id
    assert "unet_person.reused.promote" not in second.data.tags
    assert second.data.metrics["test_dice"] == parent.data.metrics["test_dice"]
    assert second.data.tags["unet_person.decision"] == "unchanged"
    versions = workspace.client().search_model_versions("name = 'unet-person'")
    assert [str(version.version) for version in versions] == ["1"]
    # The no-op leaves the record of the move that gave version 1 the alias.
    assert versions[0].tags["unet_person.decision"] == "promoted"
    assert versions[0].tags["unet_person.promote_run_id"] == steps["promote"].info.run_id
    # The closing summary: each step's run and how it was had, the scores, where to look.
    summary = result.stdout[result.stdout.index("pipeline done: run ") :]
    for step in REUSABLE:
        assert re.search(rf"{step} +{steps[step].info.run_id}  reused", summary), step
    assert f"test Dice {parent.data.metrics['test_dice']:.4f}" in summary
    assert "promote: unet-person version 1 unchanged" in summary
    uri = workspace.env["MLFLOW_TRACKING_URI"]
    look = summary.split("look at it: ")[1].split()
    assert look[0] == "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false"  # the UI stops whole
    assert look[2:5] == ["ui", "--backend-store-uri", uri]
    program = project_dir() / look[1]  # relative to the folder main ran in
    assert program.samefile(Path(sys.executable).parent / "mlflow")  # this venv's
    assert f"/runs/{second.info.run_id}?workflowType=machine_learning" in summary


def test_the_main_run_leads_to_the_model_its_train_step_logged(
    first_main, workspace: Workspace
) -> None:
    """Its page lists the model under "Logged models", not "—": the one row tells the story."""
    parent, steps = first_main
    model_uri = steps["train"].data.tags[MODEL_URI_TAG]
    assert parent.data.tags[MODEL_URI_TAG] == model_uri
    model_id = workspace.client().get_logged_model(model_uri.removeprefix("models:/")).model_id
    outputs = workspace.client().get_run(parent.info.run_id).outputs.model_outputs
    assert [output.model_id for output in outputs] == [model_id]


def test_main_without_promote_stops_at_evaluate(first_main, workspace: Workspace) -> None:
    result = workspace.run("main", workspace.params(promote="false"))
    assert result.returncode == 0, result.stderr[-3000:]
    newest = max(
        (run for run in workspace.runs() if "mlflow.parentRunId" not in run.data.tags),
        key=lambda run: run.info.start_time,
    )
    assert children(workspace, newest) == {}
    assert "unet_person.decision" not in newest.data.tags


def test_changed_training_parameter_reruns_only_what_depends_on_it(
    first_main, workspace: Workspace
) -> None:
    _, steps = first_main
    result = workspace.run("main", workspace.params(max_epochs="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    newest = max(
        (run for run in workspace.runs() if "mlflow.parentRunId" not in run.data.tags),
        key=lambda run: run.info.start_time,
    )
    assert newest.data.tags["unet_person.reused.download"] == steps["download"].info.run_id
    assert newest.data.tags["unet_person.reused.preprocess"] == steps["preprocess"].info.run_id
    rerun = children(workspace, newest)
    assert set(rerun) == {"train", "evaluate", "promote"}
    assert rerun["train"].data.metrics["epochs_trained"] == 3
    decided = rerun["promote"].data
    better = decided.metrics["candidate_dice"] > decided.metrics["champion_dice"]
    assert decided.tags["unet_person.decision"] == ("promoted" if better else "rejected")
    assert decided.tags["unet_person.champion_version"] == "1"
    holder = workspace.client().get_model_version_by_alias("unet-person", "champion")
    assert str(holder.version) == ("2" if better else "1")


def test_steps_take_their_input_as_an_artifact_uri(first_main, workspace: Workspace) -> None:
    _, steps = first_main
    download, preprocess = steps["download"], steps["preprocess"]
    elsewhere = workspace.folder / "elsewhere"
    result = workspace.run(
        "preprocess",
        {
            "raw_dir": f"runs:/{download.info.run_id}/dataset",
            "output_dir": str(elsewhere),
            "image_size": "32",
            "log_data": "false",
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(workspace.runs(), key=lambda run: run.info.start_time)
    assert (
        runs[-1].data.tags["unet_person.output_digest"]
        == (preprocess.data.tags["unet_person.output_digest"])
    )
    result = workspace.run(
        "evaluate",
        {
            "model_uri": steps["train"].data.tags[MODEL_URI_TAG],
            "data_dir": f"runs:/{preprocess.info.run_id}/processed",
        },
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(workspace.runs(), key=lambda run: run.info.start_time)
    assert runs[-1].data.metrics["test_dice"] == pytest.approx(
        steps["evaluate"].data.metrics["test_dice"]
    )
