"""Promotion: register the candidate, score it and the alias holder on one split, decide, record.

MLflow keeps no history of alias moves, so every decision is written as tags on the
candidate's version (and on the promote run): outcome, reason, both scores, the champion it
was compared with, the split's digest and the run that decided.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from pipeline.data.cache import read_cache_record
from pipeline.errors import PipelineError
from pipeline.params import PromoteParams
from pipeline.registry.decision import UNCHANGED, Decision, decide
from pipeline.registry.scores import Score, score
from pipeline.registry.versions import (
    alias_holder,
    check_alias,
    model_id_of,
    register,
    version_of,
)
from pipeline.tracking.artifacts import local_input

DECISION_TAG = "unet_person.decision"
REASON_TAG = "unet_person.reason"
CANDIDATE_DICE_TAG = "unet_person.candidate_dice"
CANDIDATE_SOURCE_TAG = "unet_person.candidate_dice_from"
CHAMPION_VERSION_TAG = "unet_person.champion_version"
CHAMPION_DICE_TAG = "unet_person.champion_dice"
CHAMPION_SOURCE_TAG = "unet_person.champion_dice_from"
SPLIT_DIGEST_TAG = "unet_person.split_digest"
PROMOTE_RUN_TAG = "unet_person.promote_run_id"
NONE = "none"


@dataclass(frozen=True)
class Promotion:
    candidate_version: str
    candidate: Score
    champion_version: str | None
    champion: Score | None
    decision: Decision
    digest: str

    def tags(self, run_id: str) -> dict[str, str]:
        """The decision record, as tags for the version and the promote run."""
        holder, champion = self.champion_version, self.champion
        return {
            DECISION_TAG: self.decision.outcome,
            REASON_TAG: self.decision.reason,
            CANDIDATE_DICE_TAG: f"{self.candidate.dice:.6f}",
            CANDIDATE_SOURCE_TAG: self.candidate.source,
            CHAMPION_VERSION_TAG: holder or NONE,
            CHAMPION_DICE_TAG: f"{champion.dice:.6f}" if champion else NONE,
            CHAMPION_SOURCE_TAG: champion.source if champion else NONE,
            SPLIT_DIGEST_TAG: self.digest,
            PROMOTE_RUN_TAG: run_id,
        }


def check(params: PromoteParams) -> None:
    if not params.model_name or "'" in params.model_name:
        raise PipelineError(
            f"parameter model_name={params.model_name!r} must be a name without quotes, "
            "e.g. unet-person"
        )
    check_alias(params.alias)
    if params.min_improvement < 0:
        raise PipelineError(
            f"parameter min_improvement={params.min_improvement} must be 0 or more (a Dice gain)"
        )
    if not 0 <= params.min_dice <= 1:
        raise PipelineError(f"parameter min_dice={params.min_dice} must be between 0 and 1")
    if params.batch_size < 1:
        raise PipelineError(f"parameter batch_size={params.batch_size} must be at least 1")


def promote(params: PromoteParams, run_id: str) -> Promotion:
    """Compare the candidate with the alias holder on the test split of data_dir; move the alias
    when the candidate wins; record the decision on the candidate's version either way.

    The candidate is registered only once it has been scored, so a model that cannot be scored
    leaves the registry as it was.
    """
    check(params)
    cache = local_input(params.data_dir, "data_dir")
    digest = read_cache_record(cache)["digest"]
    client = MlflowClient()
    name = params.model_name
    candidate_id = model_id_of(params.model_uri)
    known_version = version_of(client, name, candidate_id)
    holder = alias_holder(client, name, params.alias)
    candidate = score(client, params.model_uri, candidate_id, cache, digest, params.batch_size)
    if holder is not None and holder == known_version:
        champion: Score | None = candidate
        decision = Decision(UNCHANGED, f"version {holder} already holds @{params.alias}")
    else:
        champion = None
        if holder is not None:
            holder_uri = f"models:/{name}/{holder}"
            holder_id = model_id_of(holder_uri)
            champion = score(client, holder_uri, holder_id, cache, digest, params.batch_size)
        decision = decide(
            candidate.dice,
            None if champion is None else champion.dice,
            params.min_improvement,
            params.min_dice,
        )
    version = known_version or register(name, candidate_id)
    promotion = Promotion(version, candidate, holder, champion, decision, digest)
    for key, value in promotion.tags(run_id).items():
        client.set_model_version_tag(name, version, key, value)
    if decision.moves_alias:
        client.set_registered_model_alias(name, params.alias, version)
    return promotion
