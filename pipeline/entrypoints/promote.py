"""Entry point `promote`: give the alias to the candidate if it beats the model holding it."""

from __future__ import annotations

import sys

import mlflow

from pipeline.params import PromoteParams
from pipeline.registry.promote import promote
from pipeline.tracking.runs import INPUT_DIGEST_TAG, MODEL_VERSION_TAG, log, run_entry_point


def run(params: PromoteParams) -> None:
    run_id = mlflow.active_run().info.run_id
    promotion = promote(params, run_id)
    version = promotion.candidate_version
    mlflow.set_tags(
        {
            **promotion.tags(run_id),
            MODEL_VERSION_TAG: version,
            INPUT_DIGEST_TAG: promotion.digest,
        }
    )
    mlflow.log_metric("candidate_dice", promotion.candidate.dice)
    if promotion.champion is not None:
        mlflow.log_metric("champion_dice", promotion.champion.dice)
    log.info(
        "%s version %s: %s (%s)",
        params.model_name,
        version,
        promotion.decision.outcome,
        promotion.decision.reason,
    )


def main(argv: list[str] | None = None) -> int:
    return run_entry_point("promote", PromoteParams, run, argv)


if __name__ == "__main__":
    sys.exit(main())
