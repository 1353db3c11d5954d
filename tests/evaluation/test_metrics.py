"""Pooled and per-image metrics against counts worked out by hand."""

from __future__ import annotations

import pytest
import torch

from pipeline.evaluation.metrics import hard_predictions, per_image_dice, segmentation_metrics

ON, OFF = 5.0, -5.0


def _logits(claimed: list[list[int]]) -> torch.Tensor:
    """(N, 1, 1, P) logits from per-image 0/1 rows: ON where claimed, OFF elsewhere."""
    rows = torch.tensor(claimed, dtype=torch.float32)
    return torch.where(rows > 0, ON, OFF).reshape(len(claimed), 1, 1, -1)


def _mask(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.uint8).reshape(len(rows), 1, 1, -1)


# Image A: TP 3, FP 1, FN 1, TN 3 -> Dice 6/8.  Image B: TP 0, FP 2, FN 1, TN 5 -> Dice 0.
# Pooled: TP 3, FP 3, FN 2 -> Dice 6/11, IoU 3/8, precision 3/6, recall 3/5.
TRUTH = [[1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0]]
CLAIMED = [[1, 1, 1, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]


def _compute(logits: torch.Tensor, target: torch.Tensor, prefix: str = "") -> dict[str, float]:
    metrics = segmentation_metrics(prefix, full=True)
    metrics.update(hard_predictions(logits), target)
    return {name: float(value) for name, value in metrics.compute().items()}


def test_pooled_metrics_match_hand_counts() -> None:
    result = _compute(_logits(CLAIMED), _mask(TRUTH), prefix="test_")
    assert set(result) == {"test_dice", "test_iou", "test_precision", "test_recall"}
    assert result["test_dice"] == pytest.approx(6 / 11)
    assert result["test_iou"] == pytest.approx(3 / 8)
    assert result["test_precision"] == pytest.approx(3 / 6)
    assert result["test_recall"] == pytest.approx(3 / 5)


def test_per_image_dice_matches_hand_counts() -> None:
    dice = per_image_dice(_logits(CLAIMED), _mask(TRUTH))
    assert dice.shape == (2,)
    assert dice.tolist() == pytest.approx([6 / 8, 0.0])


def test_pooled_dice_is_not_the_mean_of_per_image_dice() -> None:
    logits, target = _logits(CLAIMED), _mask(TRUTH)
    pooled = _compute(logits, target)["dice"]
    mean = float(per_image_dice(logits, target).mean())
    assert mean == pytest.approx(0.375)
    assert pooled == pytest.approx(6 / 11)
    assert abs(pooled - mean) > 0.1


def test_pooled_metrics_accumulate_counts_across_updates() -> None:
    """Pooled over the split: two single-image updates equal one two-image update."""
    logits, target = _logits(CLAIMED), _mask(TRUTH)
    metrics = segmentation_metrics(full=True)
    metrics.update(hard_predictions(logits[:1]), target[:1])
    metrics.update(hard_predictions(logits[1:]), target[1:])
    split = {name: float(value) for name, value in metrics.compute().items()}
    assert split == pytest.approx(_compute(logits, target))
    assert split["dice"] == pytest.approx(6 / 11)


def test_training_collection_holds_dice_only() -> None:
    metrics = segmentation_metrics("val_")
    assert list(metrics.keys()) == ["val_dice"]
    assert set(segmentation_metrics("test_", full=True).keys()) == {
        "test_dice",
        "test_iou",
        "test_precision",
        "test_recall",
    }


def test_empty_mask_and_empty_prediction() -> None:
    logits = torch.full((2, 1, 3, 3), OFF)
    target = torch.zeros(2, 1, 3, 3, dtype=torch.uint8)
    assert per_image_dice(logits, target).tolist() == [1.0, 1.0]
    # zero_division=1: nothing there and nothing claimed is a perfect score on every metric.
    assert _compute(logits, target) == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}


def test_empty_mask_with_a_prediction_scores_zero() -> None:
    logits = torch.full((1, 1, 3, 3), OFF)
    logits[0, 0, 1, 1] = ON
    target = torch.zeros(1, 1, 3, 3, dtype=torch.uint8)
    assert per_image_dice(logits, target).tolist() == [0.0]
    result = _compute(logits, target)
    assert result["dice"] == 0.0
    assert result["iou"] == 0.0
    assert result["precision"] == 0.0
    assert result["recall"] == 1.0  # no positives to find: zero_division


def test_missed_mask_with_no_prediction_scores_zero() -> None:
    logits = torch.full((1, 1, 3, 3), OFF)
    target = torch.zeros(1, 1, 3, 3, dtype=torch.uint8)
    target[0, 0, 0, :] = 1
    assert per_image_dice(logits, target).tolist() == [0.0]
    result = _compute(logits, target)
    assert result["dice"] == 0.0
    assert result["precision"] == 1.0  # nothing claimed: zero_division
    assert result["recall"] == 0.0


def test_logit_zero_is_background() -> None:
    logits = torch.tensor([-3.0, -1e-6, 0.0, -0.0, 1e-6, 4.0])
    predicted = hard_predictions(logits)
    assert predicted.dtype == torch.uint8
    assert predicted.tolist() == [0, 0, 0, 0, 1, 1]


def test_logit_zero_counts_as_background_in_the_metrics() -> None:
    logits = torch.zeros(1, 1, 2, 2)
    full = torch.ones(1, 1, 2, 2, dtype=torch.uint8)
    empty = torch.zeros(1, 1, 2, 2, dtype=torch.uint8)
    assert per_image_dice(logits, full).tolist() == [0.0]
    assert per_image_dice(logits, empty).tolist() == [1.0]
    assert _compute(logits, full)["recall"] == 0.0


def test_per_image_dice_with_a_single_image() -> None:
    """Batch size 1 once tripped a torchmetrics per-sample path; keep it covered."""
    logits, target = _logits(CLAIMED[:1]), _mask(TRUTH[:1])
    dice = per_image_dice(logits, target)
    assert dice.shape == (1,)
    assert dice.item() == pytest.approx(6 / 8)
    assert dice.item() == pytest.approx(_compute(logits, target)["dice"])


def test_per_image_dice_accepts_float_and_bool_targets() -> None:
    logits, target = _logits(CLAIMED), _mask(TRUTH)
    expected = per_image_dice(logits, target)
    assert torch.equal(per_image_dice(logits, target.float()), expected)
    assert torch.equal(per_image_dice(logits, target.bool()), expected)


def _counted_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The hand-written per-image Dice that torchmetrics replaced: 2TP / (2TP + FP + FN) from
    each image's own counts in float64, 1 where both are empty."""
    predicted = hard_predictions(logits).flatten(1).bool()
    actual = target.flatten(1).bool()
    tp = (predicted & actual).sum(dim=1)
    fp = (predicted & ~actual).sum(dim=1)
    fn = (~predicted & actual).sum(dim=1)
    denominator = 2 * tp + fp + fn
    dice = (2 * tp).double() / denominator.clamp(min=1)
    return torch.where(denominator == 0, torch.ones_like(dice), dice)


def test_per_image_dice_equals_the_hand_counts_on_random_masks() -> None:
    """torchmetrics' samplewise F1 gives the counted Dice exactly (as float32: the counts are
    exact there and the division is rounded once), empty masks and empty predictions included."""
    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        count, height, width = torch.randint(1, 6, (3,), generator=generator).tolist()
        height, width = height * 7, width * 5
        logits = torch.randn(count, 1, height, width, generator=generator) * 3
        logits += torch.randn(1, generator=generator) * 3
        fill = torch.rand(1, generator=generator)
        target = (torch.rand(count, 1, height, width, generator=generator) < fill).to(torch.uint8)
        if trial % 4 == 0:
            target[0] = 0  # an empty mask
        if trial % 3 == 0:
            logits[-1] = OFF  # an empty prediction
        dice = per_image_dice(logits, target)
        assert dice.shape == (count,) and dice.dtype == torch.float32
        assert torch.equal(dice, _counted_dice(logits, target).float()), trial
    empty = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    assert per_image_dice(torch.full((3, 1, 4, 4), OFF), empty).tolist() == [1.0, 1.0, 1.0]
