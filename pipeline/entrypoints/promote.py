"""Entry point `promote`: give the alias to the candidate if it beats the model holding it."""

from __future__ import annotations

import mlflow

from pipeline.console import log
from pipeline.entrypoints.runner import run_entry_point
from pipeline.params import PromoteParams
from pipeline.registry.promote import promote

PARAMS = PromoteParams


def run(params: PromoteParams) -> None:
    """Promote; the decision record lands on this run inside `promote`, before the alias moves."""
    promotion = promote(params, mlflow.active_run().info.run_id)
    log.info(
        "%s version %s: %s (%s)",
        params.model_name,
        promotion.candidate_version,
        promotion.decision.outcome,
        promotion.decision.reason,
    )


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(__name__, PARAMS, run, argv)
