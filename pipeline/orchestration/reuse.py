"""Find finished steps that can stand in for running them again.

MLflow's multistep example matches entry point, params-as-strings and git commit, and takes
the oldest match. Here a step is reused only when its entry point, code digest (uncommitted
edits included) and input fingerprint match, its params are equal by value, and what it
produced is still there; the newest such run wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.data.cache import finished_record
from pipeline.params import flat_values, same_values
from pipeline.tracking.code_version import code_digest
from pipeline.tracking.tags import (
    CODE_TAG,
    ENDED_EARLY_TAG,
    ENTRY_POINT_TAG,
    INPUT_TAG,
    MODEL_URI_TAG,
    OUTPUT_DIGEST_TAG,
    OUTPUT_PATH_TAG,
)

# The tag a finished run of each step must carry for what it produced to be there at all.
PRODUCT_TAG = {
    "download": OUTPUT_DIGEST_TAG,
    "preprocess": OUTPUT_DIGEST_TAG,
    "train": MODEL_URI_TAG,
}
INTERRUPTED = (RunStatus.to_string(RunStatus.FAILED), RunStatus.to_string(RunStatus.KILLED))


@dataclass(frozen=True)
class StepRequest:
    """A step to run: its entry point, typed params and a fingerprint of what it reads.

    `reusable` is false for a step whose outcome depends on state outside its inputs (promote
    reads who holds the alias now), so an earlier run of it can never stand in for it.
    `resumable` is true for a step that keeps checkpoints (train): an interrupted run of it goes
    on from them, and so does one a tracking outage stopped while it started.
    `run_name` and `labels` (tags) only describe a new run; they play no part in matching.
    """

    entry_point: str
    params: Any
    input_fingerprint: str
    reusable: bool = True
    resumable: bool = False
    run_name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    def identity_tags(self) -> dict[str, str]:
        return {
            ENTRY_POINT_TAG: self.entry_point,
            CODE_TAG: code_digest(),
            INPUT_TAG: self.input_fingerprint,
        }


def matching_runs(client: MlflowClient, experiment_id: str, request: StepRequest) -> list[Run]:
    """Runs of this step with the same code, input and params by value, newest first."""
    conditions = " and ".join(
        f"tags.`{key}` = '{value}'" for key, value in request.identity_tags().items()
    )
    runs = client.search_runs(
        [experiment_id], conditions, order_by=["attributes.start_time DESC"], max_results=200
    )
    wanted = flat_values(request.params)
    return [run for run in runs if same_values(type(request.params), run.data.params, wanted)]


def outputs_intact(run: Run) -> bool:
    """Whether what the run produced can still be used: a folder with its digest, or its model."""
    tags = run.data.tags
    entry_point = tags.get(ENTRY_POINT_TAG, "")
    product = PRODUCT_TAG.get(entry_point)
    if product and product not in tags:
        return False
    if OUTPUT_PATH_TAG in tags:
        marker = finished_record(tags[OUTPUT_PATH_TAG])
        if marker is None or marker.get("digest") != tags.get(OUTPUT_DIGEST_TAG):
            return False
    if MODEL_URI_TAG in tags:
        try:
            mlflow.models.get_model_info(tags[MODEL_URI_TAG])
        except (MlflowException, OSError):
            return False
    return True


def finished_run(runs: list[Run]) -> Run | None:
    finished = RunStatus.to_string(RunStatus.FINISHED)
    return next((run for run in runs if run.info.status == finished and outputs_intact(run)), None)


def interrupted_training(runs: list[Run], checkpoint_dir: Path) -> Run | None:
    """A failed or killed train run that left a checkpoint to resume from (not one that ended
    early on purpose: a pruned trial is over)."""
    return next(
        (
            run
            for run in runs
            if run.info.status in INTERRUPTED
            and ENDED_EARLY_TAG not in run.data.tags
            and (checkpoint_dir / run.info.run_id / "last.ckpt").is_file()
        ),
        None,
    )
