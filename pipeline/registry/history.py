"""The history of an alias: every promotion that moved it, oldest first.

MLflow keeps only where an alias points now. Every promote run records its decision as tags
(`pipeline.registry.promote`), so the moves are the finished promote runs of this model and
alias whose decision is `promoted`: read from the tracking store, never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient

from pipeline.registry.promote import NONE
from pipeline.registry.versions import alias_holder
from pipeline.tracking.tags import (
    CANDIDATE_DICE_TAG,
    CHAMPION_DICE_TAG,
    CHAMPION_VERSION_TAG,
    DECISION_TAG,
    ENTRY_POINT_TAG,
    MODEL_VERSION_TAG,
    REASON_TAG,
)


@dataclass(frozen=True)
class AliasMove:
    """One promotion that pointed the alias at `version`."""

    when: datetime
    version: str
    previous: str
    candidate_dice: str
    champion_dice: str
    reason: str
    run_id: str
    experiment_id: str


def alias_moves(model_name: str, alias: str) -> list[AliasMove]:
    """The moves of `model_name@alias`, oldest first, from every experiment.

    Promotions racing from several machines can each record the same move; a run that finds the
    alias already on its version repeats no move, so only a change of version counts.
    """
    runs: list[Run] = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=(
            f"tags.`{ENTRY_POINT_TAG}` = 'promote' and tags.`{DECISION_TAG}` = 'promoted' "
            f"and params.model_name = '{model_name}' and params.alias = '{alias}' "
            "and attributes.status = 'FINISHED'"
        ),
        run_view_type=ViewType.ALL,
        order_by=["attributes.start_time ASC"],
        output_format="list",
    )
    moves: list[AliasMove] = []
    for run in runs:
        tags = run.data.tags
        if moves and moves[-1].version == tags[MODEL_VERSION_TAG]:
            continue
        moves.append(
            AliasMove(
                when=datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc),
                version=tags[MODEL_VERSION_TAG],
                previous=tags.get(CHAMPION_VERSION_TAG, NONE),
                candidate_dice=tags.get(CANDIDATE_DICE_TAG, ""),
                champion_dice=tags.get(CHAMPION_DICE_TAG, NONE),
                reason=tags.get(REASON_TAG, ""),
                run_id=run.info.run_id,
                experiment_id=run.info.experiment_id,
            )
        )
    return moves


def history_table(model_name: str, alias: str) -> str:
    """The moves as a table a person reads in a terminal, with where the alias points now."""
    moves = alias_moves(model_name, alias)
    holder = alias_holder(MlflowClient(), model_name, alias)
    where = f"version {holder}" if holder else "no version"
    now = f"{model_name}@{alias} points at {where}"
    if not moves:
        return f"{now}; no promote run has moved it in {mlflow.get_tracking_uri()}"
    header = ("when (UTC)", "version", "from", "test Dice", "was", "promote run", "why")
    rows = [
        (
            f"{move.when:%Y-%m-%d %H:%M:%S}",
            move.version,
            move.previous,
            move.candidate_dice,
            move.champion_dice,
            move.run_id,
            move.reason,
        )
        for move in moves
    ]
    widths = [max(len(row[column]) for row in (header, *rows)) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    return "\n".join([f"{now}; {len(moves)} move(s), oldest first:", *lines])
