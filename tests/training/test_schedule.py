"""The one-cycle schedule trains on any budget (torch's OneCycleLR raised ZeroDivisionError below
ten steps) and ends its decay when the time budget, not the step budget, runs out first."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Timer

from pipeline.training.schedule import END_FACTOR, START_FACTOR, one_cycle, one_cycle_factor

PEAK = 1e-2


def learning_rates(total_steps: float, timer: Timer | None = None, steps: int | None = None):
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=PEAK)
    scheduler = one_cycle(optimizer, total_steps, timer)
    rates = []
    for _ in range(int(total_steps) if steps is None else steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("total_steps", range(1, 41))
def test_every_step_budget_warms_up_and_decays_to_the_end(total_steps: int) -> None:
    rates = learning_rates(total_steps)
    assert len(rates) == total_steps
    assert all(0 < rate <= PEAK for rate in rates)
    assert rates[0] == pytest.approx(PEAK * START_FACTOR)
    if total_steps > 1:
        assert rates[-1] == pytest.approx(PEAK * END_FACTOR)  # the decay always ends
    if total_steps >= 10:
        assert max(rates) > 0.9 * PEAK
        peak_at = rates.index(max(rates))
        assert rates[: peak_at + 1] == sorted(rates[: peak_at + 1])
        assert rates[peak_at:] == sorted(rates[peak_at:], reverse=True)


def test_the_factor_is_continuous_at_the_end_of_the_warm_up() -> None:
    assert one_cycle_factor(0.0) == pytest.approx(START_FACTOR)
    assert one_cycle_factor(0.1 - 1e-9) == pytest.approx(1.0)
    assert one_cycle_factor(0.1) == pytest.approx(1.0)
    assert one_cycle_factor(1.0) == pytest.approx(END_FACTOR)


class HalfwayTimer(Timer):
    """A time budget half spent whatever the step: Lightning's own Timer, clock fixed."""

    def time_elapsed(self, stage: str = "train") -> float:
        return 60.0

    def time_remaining(self, stage: str = "train") -> float:
        return 60.0


class SpentTimer(HalfwayTimer):
    def time_remaining(self, stage: str = "train") -> float:
        return 0.0


def test_a_spent_time_budget_ends_the_decay_before_the_step_budget() -> None:
    rates = learning_rates(1000, SpentTimer(duration="00:00:02:00"), steps=3)
    assert rates[1:] == pytest.approx([PEAK * END_FACTOR] * 2)


def test_the_cycle_follows_whichever_budget_is_further_along() -> None:
    rates = learning_rates(1000, HalfwayTimer(duration="00:00:02:00"), steps=600)
    assert rates[1] == pytest.approx(PEAK * one_cycle_factor(0.5))  # time: half spent
    assert rates[599] == pytest.approx(PEAK * one_cycle_factor(599 / 999))  # steps lead now


def test_a_run_bounded_by_time_alone_follows_the_time() -> None:
    rates = learning_rates(float("inf"), HalfwayTimer(duration="00:00:02:00"), steps=2)
    assert rates[1] == pytest.approx(PEAK * one_cycle_factor(0.5))
