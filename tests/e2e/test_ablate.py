"""`ablate` end to end: a parent run, a train and evaluate child per variant and seed, the
summary in the parent, and a second study that reuses what the first one trained."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.entities import Run
from PIL import Image

from tests.conftest import isolated_environment
from tests.e2e.workspace import Workspace

pytestmark = pytest.mark.e2e

SETTINGS = {
    "source": "synthetic:32",
    "image_size": "32",
    "base_channels": "2",
    "max_epochs": "1",
    "batch_size": "8",
    "num_workers": "0",
    "log_data": "false",
    "onnx": "false",
}
FILES = ("runs.csv", "summary.csv", "summary.md", "test_dice.png")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    folder = tmp_path_factory.mktemp("ablate")
    return Workspace(folder, isolated_environment(folder), SETTINGS)


def _study(workspace: Workspace, output: str, **params: str) -> Run:
    before = {run.info.run_id for run in workspace.runs()}
    result = workspace.run(
        "ablate", workspace.params(output_dir=str(workspace.folder / output), **params)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (parent,) = [
        run
        for run in workspace.runs()
        if run.info.run_id not in before and "mlflow.parentRunId" not in run.data.tags
    ]
    return parent


def _children(workspace: Workspace, parent: Run, entry_point: str) -> list[Run]:
    return [
        run
        for run in workspace.runs()
        if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        and run.data.tags["mlflow.project.entryPoint"] == entry_point
    ]


@pytest.fixture(scope="module")
def first_study(workspace: Workspace) -> Run:
    return _study(workspace, "first", variants="paper", seeds="1,2")


@pytest.fixture(autouse=True)
def track_into_workspace(workspace: Workspace) -> None:
    mlflow.set_tracking_uri(workspace.env["MLFLOW_TRACKING_URI"])


def test_one_train_and_evaluate_child_per_variant_and_seed(
    first_study: Run, workspace: Workspace
) -> None:
    assert first_study.info.status == "FINISHED"
    assert first_study.data.tags["mlflow.project.entryPoint"] == "ablate"
    trains = _children(workspace, first_study, "train")
    evaluates = _children(workspace, first_study, "evaluate")
    labels = sorted(
        (r.data.tags["unet_person.variant"], r.data.tags["unet_person.seed"]) for r in trains
    )
    assert labels == [("baseline", "1"), ("baseline", "2"), ("paper", "1"), ("paper", "2")]
    assert {r.data.tags["mlflow.runName"] for r in trains} == {
        "baseline seed 1",
        "baseline seed 2",
        "paper seed 1",
        "paper seed 2",
    }
    assert len(evaluates) == 4
    assert all(r.info.status == "FINISHED" for r in trains + evaluates)
    assert all(r.data.tags["unet_person.study"] == first_study.info.run_id for r in trains)
    # One data split for all: each step ran once, as the parent's children.
    assert len(_children(workspace, first_study, "preprocess")) == 1
    assert len({r.data.params["data_dir"] for r in trains}) == 1


def test_variants_train_with_their_recipe_on_the_studys_budget(
    first_study: Run, workspace: Workspace
) -> None:
    trains = {
        (r.data.tags["unet_person.variant"], r.data.params["seed"]): r
        for r in _children(workspace, first_study, "train")
    }
    baseline, paper = trains[("baseline", "1")].data, trains[("paper", "1")].data
    assert baseline.tags["unet_person.recipe"] == "default"
    assert paper.tags["unet_person.recipe"] == "paper"
    assert baseline.params["resolved.batch_norm"] == "true"
    assert baseline.params["resolved.loss"] == "bce_dice"
    assert paper.params["resolved.batch_norm"] == "false"
    assert float(paper.params["resolved.lr"]) == 1e-5
    for run in (baseline, paper):
        assert run.params["resolved.max_epochs"] == "1"
        assert run.params["resolved.base_channels"] == "2"
        assert run.metrics["epochs_trained"] == 1
        assert run.params["onnx"] == "false"  # passed on: the study's models carry no export


def test_parent_holds_the_summary_table_and_chart(first_study: Run, workspace: Workspace) -> None:
    local = workspace.folder / "first"
    logged = Path(
        mlflow.artifacts.download_artifacts(
            run_id=first_study.info.run_id, artifact_path="ablation"
        )
    )
    for name in FILES:
        assert (local / name).read_bytes() == (logged / name).read_bytes(), name
    summary = pd.read_csv(local / "summary.csv").set_index("variant")
    assert list(summary.index) == ["baseline", "paper"]
    scores = {
        (r.data.tags["unet_person.variant"], r.data.tags["unet_person.seed"]): r.data.metrics[
            "test_dice"
        ]
        for r in _children(workspace, first_study, "evaluate")
    }
    for variant in ("baseline", "paper"):
        mean = (scores[(variant, "1")] + scores[(variant, "2")]) / 2
        assert summary.loc[variant, "seeds"] == 2
        assert summary.loc[variant, "test_dice_mean"] == pytest.approx(mean)
        assert first_study.data.metrics[f"test_dice.{variant}"] == pytest.approx(mean)
    markdown = (local / "summary.md").read_text()
    assert "| `paper` | recipe paper at the same budget" in markdown
    with Image.open(local / "test_dice.png") as chart:
        assert chart.format == "PNG"


def test_a_wider_study_trains_only_what_is_new(first_study: Run, workspace: Workspace) -> None:
    second = _study(workspace, "second", variants="paper,skip", seeds="1,2")
    trains = _children(workspace, second, "train")
    # Reused runs keep their first parent; only the new variant's runs are the second's.
    assert sorted(r.data.tags["unet_person.variant"] for r in trains) == ["skip", "skip"]
    summary = pd.read_csv(workspace.folder / "second" / "summary.csv").set_index("variant")
    assert list(summary.index[:1]) == ["baseline"]
    assert set(summary.index) == {"baseline", "paper", "skip"}
    first = pd.read_csv(workspace.folder / "first" / "summary.csv").set_index("variant")
    assert summary.loc["paper", "test_dice_mean"] == first.loc["paper", "test_dice_mean"]
    runs = pd.read_csv(workspace.folder / "second" / "runs.csv")
    first_runs = pd.read_csv(workspace.folder / "first" / "runs.csv")
    assert set(first_runs["train_run_id"]) <= set(runs["train_run_id"])


def test_an_unknown_variant_stops_before_any_work(workspace: Workspace) -> None:
    before = len(workspace.runs())
    result = workspace.run("ablate", workspace.params(variants="dropout"))
    assert result.returncode == 2
    assert "variants='dropout' names no known variant" in result.stderr
    assert len(workspace.runs()) == before  # checked before any run opens, even the parent
