"""The promotion rule alone: a floor for the first model, a margin for every later one."""

from __future__ import annotations

import pytest

from pipeline.registry.decision import PROMOTED, REJECTED, decide


@pytest.mark.parametrize(
    ("candidate", "min_dice", "outcome"),
    [(0.8, 0.5, PROMOTED), (0.5, 0.5, PROMOTED), (0.49, 0.5, REJECTED), (0.0, 0.0, PROMOTED)],
)
def test_first_model_needs_min_dice(candidate: float, min_dice: float, outcome: str) -> None:
    decision = decide(candidate, None, min_improvement=0.0, min_dice=min_dice)
    assert decision.outcome == outcome
    assert decision.moves_alias is (outcome == PROMOTED)
    assert "min_dice" in decision.reason


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "outcome"),
    [
        (0.81, 0.80, 0.0, PROMOTED),
        (0.80, 0.80, 0.0, REJECTED),  # a tie keeps the champion
        (0.79, 0.80, 0.0, REJECTED),
        (0.82, 0.80, 0.01, PROMOTED),
        (0.805, 0.80, 0.01, REJECTED),  # better, but not by the margin
        (0.10, 0.05, 0.0, PROMOTED),  # min_dice is a floor for the first model only
    ],
)
def test_later_models_must_beat_the_champion_by_the_margin(
    candidate: float, champion: float, margin: float, outcome: str
) -> None:
    decision = decide(candidate, champion, min_improvement=margin, min_dice=0.5)
    assert decision.outcome == outcome
    assert f"{champion:.4f}" in decision.reason and f"{candidate:.4f}" in decision.reason
