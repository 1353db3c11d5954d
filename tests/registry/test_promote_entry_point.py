"""`promote` against a real (SQLite) registry: the better model takes the alias, a worse one does
not, each decision is written on the run and each one that changes something on the version
(a no-op never overwrites the record of a move), and one model is one version.

The models have known scores: one calls every pixel a person (Dice 2S/(S+N) for S person
pixels of N), one calls none (Dice 0), since every synthetic test photo shows a person.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.data.cache import open_split, read_cache_record
from pipeline.entrypoints import evaluate, history, promote
from pipeline.tracking.tags import ENTRY_POINT_TAG, ERROR_TAG
from tests.segmenters import constant_net, log_model, split_cache

NAME = "unet-person"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return split_cache(tmp_path_factory.mktemp("split"))


@pytest.fixture
def everyone() -> str:
    return log_model(constant_net(20.0))


@pytest.fixture
def nobody() -> str:
    return log_model(constant_net(-20.0))


def all_person_dice(cache: Path) -> float:
    masks = np.asarray(open_split(cache, "test")[1])
    return 2 * masks.sum() / (masks.sum() + masks.size)


def run_promote(model_uri: str, cache: Path, *extra: str) -> int:
    return promote.main(["--model_uri", model_uri, "--data_dir", str(cache), *extra])


def promote_runs() -> list[Run]:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("unet-person")
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{ENTRY_POINT_TAG}` = 'promote'",
        order_by=["attributes.start_time ASC"],
    )
    return list(runs)


def champion_version() -> str | None:
    version = MlflowClient().get_registered_model(NAME).aliases.get("champion")
    return None if version is None else str(version)  # SQLite answers with an int


def version_tags(version: str) -> dict[str, str]:
    return MlflowClient().get_model_version(NAME, version).tags


def test_the_better_model_takes_the_alias_and_a_worse_one_does_not(
    cache: Path, everyone: str, nobody: str
) -> None:
    client = MlflowClient()
    digest = read_cache_record(cache)["digest"]

    # A free alias needs min_dice: refused, but registered and recorded.
    assert run_promote(everyone, cache, "--min_dice", "0.99") == 0
    assert champion_version() is None
    assert version_tags("1")["unet_person.decision"] == "rejected"
    assert "< min_dice 0.99" in version_tags("1")["unet_person.reason"]

    # The first model over the floor takes it.
    assert run_promote(nobody, cache, "--min_dice", "0") == 0
    assert champion_version() == "2"
    assert version_tags("2")["unet_person.decision"] == "promoted"
    assert version_tags("2")["unet_person.champion_version"] == "none"
    first = promote_runs()[-1].info.run_id
    assert MlflowClient().get_model_version(NAME, "2").description == (
        f"Promoted for @champion by promote run {first}: no model held the alias; test Dice "
        f"0.0000 >= min_dice 0.0; scored on the test split {digest[:12]}."
    )

    # A better candidate takes it from the champion, scored on the same split.
    assert run_promote(everyone, cache) == 0
    assert champion_version() == "1"
    won = version_tags("1")
    decided_by = promote_runs()[-1]
    assert won["unet_person.decision"] == "promoted"
    assert float(won["unet_person.candidate_dice"]) == pytest.approx(all_person_dice(cache))
    assert float(won["unet_person.champion_dice"]) == 0.0
    assert won["unet_person.champion_version"] == "2"
    assert won["unet_person.split_digest"] == digest
    assert won["unet_person.promote_run_id"] == decided_by.info.run_id
    described = client.get_model_version(NAME, "1").description
    assert described.startswith(f"Promoted for @champion by promote run {decided_by.info.run_id}")
    assert (
        "beats the champion's 0.0000" in described and "(the champion was version 2)" in described
    )
    assert decided_by.data.metrics == {
        "candidate_dice": pytest.approx(all_person_dice(cache)),
        "champion_dice": 0.0,
    }
    assert decided_by.data.tags["unet_person.decision"] == "promoted"
    assert decided_by.data.tags["unet_person.model_version"] == "1"
    assert decided_by.data.tags["unet_person.input_digest"] == digest
    assert decided_by.data.params["model_uri"] == everyone

    # A worse one is compared and refused; the refusal changes nothing, so it is recorded on
    # its run and version 2 keeps the record of its own promotion.
    assert run_promote(nobody, cache) == 0
    assert champion_version() == "1"
    refused_by = promote_runs()[-1].data.tags
    assert refused_by["unet_person.decision"] == "rejected"
    assert refused_by["unet_person.champion_version"] == "1"
    assert refused_by["unet_person.model_version"] == "2"
    assert "does not beat the champion's" in refused_by["unet_person.reason"]
    assert version_tags("2")["unet_person.decision"] == "promoted"
    assert version_tags("2")["unet_person.champion_version"] == "none"

    # Four promotions of two models: two versions.
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2


def test_promoting_the_champion_again_keeps_its_version_and_its_record(
    cache: Path, everyone: str
) -> None:
    for _ in range(3):
        assert run_promote(everyone, cache, "--min_dice", "0") == 0
    assert champion_version() == "1"
    assert len(MlflowClient().search_model_versions(f"name = '{NAME}'")) == 1
    promoted_by, *no_ops = promote_runs()
    record = version_tags("1")
    assert record["unet_person.decision"] == "promoted"
    assert record["unet_person.promote_run_id"] == promoted_by.info.run_id
    assert record["unet_person.champion_version"] == "none"
    for run in no_ops:  # each no-op keeps its full record on its own run
        tags = run.data.tags
        assert tags["unet_person.decision"] == "unchanged"
        assert tags["unet_person.reason"] == "version 1 already holds @champion"
        assert tags["unet_person.promote_run_id"] == run.info.run_id
        assert tags["unet_person.champion_version"] == "1"
        assert tags["unet_person.model_version"] == "1"
        assert set(run.data.metrics) == {"candidate_dice", "champion_dice"}


def test_a_margin_keeps_a_slightly_better_model_out(
    cache: Path, everyone: str, nobody: str
) -> None:
    assert run_promote(nobody, cache, "--min_dice", "0") == 0
    assert run_promote(everyone, cache, "--min_improvement", "0.99") == 0
    assert champion_version() == "1"
    assert version_tags("2")["unet_person.decision"] == "rejected"


def test_evaluate_figures_for_the_same_model_and_split_are_reused(
    cache: Path, tmp_path: Path
) -> None:
    client = MlflowClient()
    # The model lives in another experiment than the evaluate and promote runs.
    client.create_experiment("models", artifact_location=(tmp_path / "models").as_uri())
    everyone = log_model(constant_net(20.0), experiment="models")
    assert evaluate.main(["--model_uri", everyone, "--data_dir", str(cache)]) == 0
    experiment = client.get_experiment_by_name("unet-person")
    (evaluated,) = client.search_runs(
        [experiment.experiment_id], f"tags.`{ENTRY_POINT_TAG}` = 'evaluate'"
    )
    # A figure for the same model on another split must not be taken for this split's.
    elsewhere = client.create_run(
        experiment.experiment_id,
        tags={
            "unet_person.evaluated_model_id": evaluated.data.tags["unet_person.evaluated_model_id"],
            "unet_person.input_digest": "another-split",
        },
    )
    client.log_metric(elsewhere.info.run_id, "test_dice", 0.999)
    client.set_terminated(elsewhere.info.run_id)

    assert run_promote(everyone, cache, "--min_dice", "0") == 0
    tags = version_tags("1")
    assert tags["unet_person.candidate_dice_from"] == evaluated.info.run_id
    assert float(tags["unet_person.candidate_dice"]) == pytest.approx(
        evaluated.data.metrics["test_dice"], abs=1e-6
    )


def test_without_an_evaluate_run_the_model_is_scored_here(cache: Path, everyone: str) -> None:
    assert run_promote(everyone, cache, "--min_dice", "0") == 0
    assert version_tags("1")["unet_person.candidate_dice_from"] == "this run"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--alias", "v2"], "parameter alias='v2' is not a usable alias"),
        (["--min_dice", "1.5"], "parameter min_dice=1.5 must be between 0 and 1"),
        (["--min_improvement", "-0.1"], "parameter min_improvement=-0.1 must be 0 or more"),
    ],
)
def test_bad_values_are_refused_before_any_run_and_nothing_is_registered(
    cache: Path, everyone: str, capsys, argv: list[str], message: str
) -> None:
    assert run_promote(everyone, cache, *argv) == 2
    assert message in capsys.readouterr().err
    assert promote_runs() == []
    assert MlflowClient().search_registered_models() == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model_uri", "models:/m-doesnotexist"], "cannot find model_uri=models:/m-doesnotexist"),
        (["--data_dir", "nowhere"], "nowhere is not a finished preprocess output"),
    ],
)
def test_inputs_that_are_not_there_are_named_and_nothing_is_registered(
    cache: Path, everyone: str, capsys, argv: list[str], message: str
) -> None:
    assert run_promote(everyone, cache, *argv) == 2
    assert message in capsys.readouterr().err
    (run,) = promote_runs()
    assert run.info.status == "FAILED" and message in run.data.tags[ERROR_TAG]
    assert MlflowClient().search_registered_models() == []


class Echo(mlflow.pyfunc.PythonModel):
    """A model from elsewhere: it takes and returns anything."""

    def predict(self, context, model_input, params=None):
        return model_input


def test_a_model_that_is_not_a_segmenter_is_refused_before_registering(cache: Path, capsys) -> None:
    with mlflow.start_run():
        other = mlflow.pyfunc.log_model(name="model", python_model=Echo()).model_uri
    assert run_promote(other, cache, "--min_dice", "0") == 2
    assert "is not a segmentation model logged by this pipeline" in capsys.readouterr().err
    assert MlflowClient().search_registered_models() == []


def test_history_lists_every_move_of_the_alias_and_nothing_else(
    cache: Path, everyone: str, nobody: str, capsys
) -> None:
    assert history.main([]) == 0
    assert capsys.readouterr().out.startswith("unet-person@champion points at no version; no ")
    for model_uri, extra in [
        (nobody, ["--min_dice", "0"]),  # version 1 takes the free alias
        (nobody, []),  # unchanged
        (everyone, []),  # version 2 takes it from version 1
        (nobody, []),  # rejected
        (everyone, ["--alias", "staging", "--min_dice", "0"]),  # another alias
        (everyone, []),  # unchanged
    ]:
        assert run_promote(model_uri, cache, *extra) == 0
    capsys.readouterr()
    deciders = [
        run.info.run_id
        for run in promote_runs()
        if run.data.tags["unet_person.decision"] == "promoted"
        and run.data.params["alias"] == "champion"
    ]

    assert history.main([]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header == "unet-person@champion points at version 2; 2 move(s), oldest first:"
    assert rows[0].split()[:7] == ["when", "(UTC)", "version", "from", "test", "Dice", "was"]
    first, second = (row.split() for row in rows[1:])
    assert first[2:5] == ["1", "none", "0.000000"] and first[6] == deciders[0]
    assert second[2:4] == ["2", "1"] and second[6] == deciders[1]
    assert float(second[4]) == pytest.approx(all_person_dice(cache), abs=1e-6)
    assert second[5] == "0.000000"

    assert history.main(["--alias", "staging"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3  # its one move


def test_history_refuses_a_bad_name_before_reading(capsys) -> None:
    assert history.main(["--model_name", "x' or '1"]) == 2
    assert "model_name" in capsys.readouterr().err


def test_promote_starts_without_pytorch() -> None:
    """main's promote finds evaluate's figures: torch, needed only to score a model nobody
    evaluated, would double the step's start-up (4 s of imports of a 5 s step on a CPU)."""
    probe = "import sys, pipeline.entrypoints.promote; print('torch' in sys.modules)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "False"
