"""Open the MLflow run a SLURM job trains into and print its id (used by slurm/train.sbatch).

The batch script runs this once per job, before `srun` starts the ranks, and keeps the id
beside the checkpoints under the job's id: a requeued start of the job (same id) then resumes
that run, and every rank inherits it as MLFLOW_RUN_ID, so no rank has to find it.
"""

from __future__ import annotations

import os
import sys

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.errors import PipelineError
from pipeline.tracking.lease import heartbeat_tag
from pipeline.tracking.runs import DEFAULT_EXPERIMENT, configure_tracking


def open_run(run_name: str = "train") -> str:
    """A new run in the experiment the pipeline would use, tagged like the runs `main` opens
    for its steps: with a heartbeat, so a run whose job dies before training starts is closed
    as abandoned instead of showing RUNNING forever."""
    configure_tracking()
    experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or (
        mlflow.set_experiment(
            os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        ).experiment_id
    )
    run = MlflowClient().create_run(experiment_id, run_name=run_name, tags=heartbeat_tag())
    return run.info.run_id


def main() -> int:
    try:
        print(open_run())
    except PipelineError as error:
        print(f"open_run: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
