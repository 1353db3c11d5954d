"""The losses a recipe can name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.training.losses import BceDiceLoss, SoftDiceLoss, segmentation_loss

CONFIDENT = 20.0  # a logit whose sigmoid is 1 to within 2e-9


def test_soft_dice_is_zero_for_a_confident_correct_prediction_and_one_for_a_wrong_one() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    right = (target * 2 - 1) * CONFIDENT
    assert float(SoftDiceLoss(smooth=0)(right, target)) == pytest.approx(0, abs=1e-6)
    assert float(SoftDiceLoss(smooth=0)(-right, target)) == pytest.approx(1, abs=1e-6)


def test_soft_dice_is_pooled_over_the_batch_like_the_metric() -> None:
    """A missed tiny person weighs by its pixels, not as half the batch's Dice."""
    target = torch.zeros(2, 1, 10, 10)
    target[0, :, :, :5] = 1  # 50 pixels, found
    target[1, :, 0, 0] = 1  # 1 pixel, missed
    logits = torch.full_like(target, -CONFIDENT)
    logits[0, :, :, :5] = CONFIDENT
    pooled = 1 - 2 * 50 / (50 + 51)
    assert float(SoftDiceLoss(smooth=0)(logits, target)) == pytest.approx(pooled, abs=1e-5)


def test_bce_dice_adds_the_two_and_gives_gradients() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 6, 6, requires_grad=True)
    target = (torch.rand(2, 1, 6, 6) > 0.5).float()
    total = BceDiceLoss()(logits, target)
    expected = nn.BCEWithLogitsLoss()(logits, target) + SoftDiceLoss()(logits, target)
    torch.testing.assert_close(total, expected)
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert float(logits.grad.abs().sum()) > 0


def test_losses_by_name() -> None:
    assert isinstance(segmentation_loss("bce"), nn.BCEWithLogitsLoss)
    assert isinstance(segmentation_loss("bce_dice"), BceDiceLoss)
    with pytest.raises(ValueError, match="unknown loss 'no_such_loss': use one of bce, bce_dice"):
        segmentation_loss("no_such_loss")
