"""Promotion: register the candidate, score it and the alias holder on one split, decide, record.

MLflow keeps no history of alias moves, so the decisions that change something are written as
tags on the candidate's version: outcome, reason, both scores, the champion it was compared
with, the split's digest and the run that decided. That is the first decision on a version
(promoted or rejected) and every move of the alias onto it (promoted). A decision that changes
nothing (`unchanged`, or a version already registered being rejected again) is written only on
its own promote run, so running `main` again never erases the record of the move; the promote
runs hold every decision, the version's tags the ones that mattered.

Promotions of one model can run at once (two `main`s, a retried job). Registry writes are not
transactional across calls, so two guards keep them to one version and consistent decisions:
- on one machine a file lock per (registry, model name) serialises them: the first decides,
  the others then find the candidate holding the alias and say `unchanged`;
- processes on different machines share no lock, so the registry side converges by itself:
  a duplicate version is deleted by the process that made it (`register_once`) and setting the
  alias or a version tag survives a concurrent insert of the same row (`write_despite_races`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

from pipeline.data.cache import processed_input, read_cache_record
from pipeline.locks import hold
from pipeline.registry.decision import UNCHANGED, Decision, decide
from pipeline.registry.request import PromoteParams
from pipeline.registry.scores import Score, score
from pipeline.registry.versions import (
    alias_holder,
    describe_version,
    model_id_of,
    register_once,
    set_alias,
    set_version_tags,
    versions_of,
)
from pipeline.tracking.artifacts import cache_root
from pipeline.tracking.tags import (
    CANDIDATE_DICE_TAG,
    CANDIDATE_SOURCE_TAG,
    CHAMPION_DICE_TAG,
    CHAMPION_SOURCE_TAG,
    CHAMPION_VERSION_TAG,
    DECISION_TAG,
    INPUT_DIGEST_TAG,
    MODEL_VERSION_TAG,
    PROMOTE_RUN_TAG,
    REASON_TAG,
    SPLIT_DIGEST_TAG,
)

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

    def description(self, run_id: str, alias: str) -> str:
        """The decision as the version's description, in one sentence: the registry's UI shows
        a description whole, where it cuts the tags' names to `unet_person.decisi...`."""
        against = f" (the champion was version {self.champion_version})"
        return (
            f"{self.decision.outcome.capitalize()} for @{alias} by promote run {run_id}: "
            f"{self.decision.reason}{against if self.champion_version else ''}; scored on the "
            f"test split {self.digest[:12]}."
        )


def promotion_lock(name: str) -> Path:
    """The lock file that serialises promotions of `name` into this registry on this machine.

    Keyed by registry URI (the tracking URI unless MLFLOW_REGISTRY_URI says otherwise: the
    registry is what promotions write) and name, so other models and registries never wait. Two
    spellings of one store (a relative and an absolute SQLite path) get two locks; the registry
    side still converges then, only "the first decides, the rest say unchanged" is lost.
    """
    key = hashlib.sha256(f"{mlflow.get_registry_uri()}\n{name}".encode()).hexdigest()[:24]
    return cache_root() / "locks" / f"promote-{key}.lock"


def promote(params: PromoteParams, run_id: str) -> Promotion:
    """Compare the candidate with the alias holder on the test split of data_dir; move the alias
    when the candidate wins; record the decision on the candidate's version when it changes
    something.

    The candidate is scored before the lock (its score does not depend on the registry, and
    scoring can be slow); reading the holder, deciding, registering and moving the alias happen
    under it. The lock waits as long as it takes: a holder that dies releases it, and one that
    hangs on the server ends when MLflow's HTTP retries do. The candidate is registered only
    once both models have been scored, so a model that cannot be scored leaves the registry as
    it was.
    """
    cache = processed_input(params.data_dir, "data_dir")
    digest = read_cache_record(cache)["digest"]
    client = MlflowClient()
    name = params.model_name
    candidate_id = model_id_of(params.model_uri)
    candidate = score(client, params.model_uri, candidate_id, cache, digest, params.batch_size)
    with hold(promotion_lock(name), purpose=f"promoting {name}"):
        holder = alias_holder(client, name, params.alias)
        if holder is not None and holder in versions_of(client, name, candidate_id):
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
        version = register_once(client, name, candidate_id)
        promotion = Promotion(version, candidate, holder, champion, decision, digest)
        record_on_run(client, run_id, promotion)
        if decision.moves_alias:
            set_alias(client, name, params.alias, version)
        if changes_the_record(client, name, version, decision):
            # After the alias moved, so a version never says `promoted` without having held it.
            set_version_tags(client, name, version, promotion.tags(run_id))
            describe_version(client, name, version, promotion.description(run_id, params.alias))
    return promotion


def record_on_run(client: MlflowClient, run_id: str, promotion: Promotion) -> None:
    """The full decision record, with both scores as metrics, on the promote run, every time.

    Written before the alias moves, so a process that dies between moving it and tagging the
    version still leaves the record of the move.
    """
    tags = {
        **promotion.tags(run_id),
        MODEL_VERSION_TAG: promotion.candidate_version,
        INPUT_DIGEST_TAG: promotion.digest,
    }
    scores = {"candidate_dice": promotion.candidate, "champion_dice": promotion.champion}
    now = get_current_time_millis()
    client.log_batch(
        run_id,
        metrics=[Metric(key, got.dice, now, 0) for key, got in scores.items() if got is not None],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )


def changes_the_record(client: MlflowClient, name: str, version: str, decision: Decision) -> bool:
    """Whether the version's tags take this decision: every move of the alias onto it, and the
    first decision on it. `unchanged` never does, not even on a version with no record yet: that
    is a version whose promotion, in another process, is writing its record right now."""
    if decision.outcome == UNCHANGED:
        return False
    return decision.moves_alias or DECISION_TAG not in client.get_model_version(name, version).tags
