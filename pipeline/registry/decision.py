"""The promotion rule, apart from MLflow so it reads (and is tested) as the rule alone."""

from __future__ import annotations

from dataclasses import dataclass

PROMOTED = "promoted"
REJECTED = "rejected"
UNCHANGED = "unchanged"


@dataclass(frozen=True)
class Decision:
    outcome: str  # PROMOTED, REJECTED or UNCHANGED
    reason: str

    @property
    def moves_alias(self) -> bool:
        return self.outcome == PROMOTED


def decide(
    candidate_dice: float,
    champion_dice: float | None,
    min_improvement: float,
    min_dice: float,
) -> Decision:
    """Promote the first model when its Dice reaches min_dice; later ones only when they beat the
    champion by more than min_improvement. A tie keeps the champion: the alias moves only for
    a measured gain, so re-trained equals do not churn what people use."""
    if champion_dice is None:
        if candidate_dice >= min_dice:
            return Decision(
                PROMOTED,
                f"no model held the alias; test Dice {candidate_dice:.4f} >= min_dice {min_dice}",
            )
        return Decision(
            REJECTED,
            f"no model holds the alias, but test Dice {candidate_dice:.4f} < min_dice {min_dice}",
        )
    if candidate_dice > champion_dice + min_improvement:
        return Decision(
            PROMOTED,
            f"test Dice {candidate_dice:.4f} beats the champion's {champion_dice:.4f} by more "
            f"than min_improvement {min_improvement}",
        )
    return Decision(
        REJECTED,
        f"test Dice {candidate_dice:.4f} does not beat the champion's {champion_dice:.4f} by "
        f"more than min_improvement {min_improvement}",
    )
