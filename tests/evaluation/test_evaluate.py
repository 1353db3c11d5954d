"""`evaluate` on a tiny generated split cache: its metrics land on the logged model, linked to the
test split it logs as a dataset input, and `best_and_worst.png` shows the best and the worst
test images, each with its Dice, in the layout the figure code draws."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.data.cache import open_split, read_cache_record
from pipeline.entrypoints import evaluate
from pipeline.evaluation.figures import (
    ERROR_LEGEND,
    GAP,
    Section,
    captioned_sheet,
    label_font,
    legend_height,
    line_height,
)
from pipeline.evaluation.metrics import hard_predictions
from pipeline.tracking.models import load_predictor, segmenter_of
from pipeline.tracking.tags import ENTRY_POINT_TAG
from tests.segmenters import IMAGE_SIZE, log_model, split_cache, varied_net

TEST_METRICS = {"test_dice", "test_iou", "test_precision", "test_recall", "test_bce"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return split_cache(tmp_path_factory.mktemp("split"))


@pytest.fixture
def evaluated(cache: Path):
    """A model logged as train logs one, and the finished evaluate run of it."""
    model_uri = log_model(varied_net())
    assert evaluate.main(["--model_uri", model_uri, "--data_dir", str(cache)]) == 0
    client = MlflowClient()
    experiment = client.get_experiment_by_name("unet-person")
    (run,) = client.search_runs(
        [experiment.experiment_id], f"tags.`{ENTRY_POINT_TAG}` = 'evaluate'"
    )
    return model_uri, run


def test_metrics_are_linked_to_the_model_and_the_test_split(cache: Path, evaluated) -> None:
    model_uri, run = evaluated
    test_split = f"{read_cache_record(cache)['digest'][:12]}-test"

    # The test split is an input of the evaluate run, under its context.
    inputs = run.inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("person-test", test_split)]
    assert {tag.key: tag.value for tag in inputs[0].tags}["mlflow.data.context"] == "test"

    # The model's page lists the metrics with the dataset they were measured on.
    model_id = run.data.tags["unet_person.evaluated_model_id"]
    assert model_uri == f"models:/{model_id}"
    linked = mlflow.get_logged_model(model_id).metrics
    by_key = {metric.key: metric for metric in linked}
    assert set(by_key) == set(run.data.metrics)
    assert set(by_key) >= TEST_METRICS
    for metric in linked:
        assert (metric.dataset_name, metric.dataset_digest) == ("person-test", test_split)
        assert metric.run_id == run.info.run_id
        assert metric.value == pytest.approx(run.data.metrics[metric.key])


def test_best_and_worst_shows_the_extremes_with_their_dice(cache: Path, evaluated) -> None:
    model_uri, run = evaluated
    client = MlflowClient()
    with Image.open(client.download_artifacts(run.info.run_id, "best_and_worst.png")) as logged:
        sheet = np.asarray(logged.convert("RGB"))
    table = pd.read_csv(client.download_artifacts(run.info.run_id, "per_image.csv"))
    images, masks = open_split(cache, "test")
    count = len(table) // 2
    assert count >= 2
    assert table["dice"].nunique() == len(table)  # a clear order: best and worst are certain

    # Expected size: two sections (title, one line of `count` tiles with captions), a legend.
    panel = IMAGE_SIZE * 4  # 32 px enlarged to 128
    font = label_font(panel)
    band = line_height(font)
    width = count * (2 * panel + 2 * GAP) - GAP
    section = band + GAP + panel + band + GAP
    assert sheet.shape == (2 * section + legend_height(ERROR_LEGEND, font, width), width, 3)

    # Exactly the sheet of the highest-Dice images, then the lowest, captioned with their Dice.
    segmenter = segmenter_of(load_predictor(model_uri), model_uri)
    ranked = table.sort_values("dice", ascending=False)
    sections = []
    for title, rows in (
        (f"best {count} of {len(table)} test images (highest Dice first)", ranked[:count]),
        (f"worst {count} of {len(table)} test images (lowest Dice first)", ranked[::-1][:count]),
    ):
        chosen = rows["index"].to_numpy()
        pictures = np.array(images[chosen])
        predictions = hard_predictions(segmenter.logits(pictures)).squeeze(1).numpy()
        captions = [
            f"Dice {dice:.3f}  {Path(name).stem}"
            for dice, name in zip(rows["dice"], rows["image"], strict=True)
        ]
        sections.append(Section(title, pictures, np.array(masks[chosen]), predictions, captions))
    np.testing.assert_array_equal(sheet, np.asarray(captioned_sheet(sections, columns=4)))
    assert sections[0].captions[0].startswith(f"Dice {table['dice'].max():.3f}")
    assert sections[1].captions[0].startswith(f"Dice {table['dice'].min():.3f}")


def test_flip_tta_is_scored_apart_and_promote_does_not_take_its_dice(cache: Path) -> None:
    """evaluate --tta true scores the model's mirrored-average masks; promote compares models
    as they serve by default, so it looks past such a run for a plain one."""
    from pipeline.evaluation.evaluate import evaluate as score_split
    from pipeline.registry.scores import finished_evaluation

    model_uri = log_model(varied_net())
    segmenter = segmenter_of(load_predictor(model_uri), model_uri)
    images, masks = open_split(cache, "test")
    expected = hard_predictions(segmenter.logits(np.array(images), tta=True))[:, 0].numpy()
    overlap = (expected & np.array(masks)).sum()
    dice = 2 * overlap / (expected.sum() + np.array(masks).sum())
    assert score_split(segmenter, cache, 4, tta=True).metrics["test_dice"] == pytest.approx(dice)

    assert evaluate.main(["--model_uri", model_uri, "--data_dir", str(cache), "--tta", "true"]) == 0
    client = MlflowClient()
    experiment = client.get_experiment_by_name("unet-person")
    model_id = model_uri.removeprefix("models:/")
    digest = read_cache_record(cache)["digest"]
    assert finished_evaluation(client, model_id, digest, [experiment.experiment_id]) is None
    assert evaluate.main(["--model_uri", model_uri, "--data_dir", str(cache)]) == 0
    plain = finished_evaluation(client, model_id, digest, [experiment.experiment_id])
    assert plain is not None and plain.data.params["tta"] == "false"
