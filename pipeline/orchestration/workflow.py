"""`main`: the steps as child runs of one parent, reusing what is already done."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipeline.data.download import source_fingerprint, source_kind
from pipeline.errors import PipelineError
from pipeline.orchestration.project import run_step
from pipeline.orchestration.reuse import (
    StepRequest,
    finished_run,
    interrupted_training,
    matching_runs,
)
from pipeline.params import (
    DownloadParams,
    EvaluateParams,
    MainParams,
    PreprocessParams,
    PromoteParams,
    TrainParams,
    as_text,
)
from pipeline.registry.promote import DECISION_TAG, REASON_TAG
from pipeline.tracking.models import MODEL_URI_TAG
from pipeline.tracking.runs import MODEL_VERSION_TAG, OUTPUT_DIGEST_TAG

log = logging.getLogger("unet_person")


class Workflow:
    """Runs steps as children of the active run, each in its own process like `mlflow run`."""

    def __init__(self, reuse: bool, checkpoint_dir: Path) -> None:
        self.client = MlflowClient()
        self.parent = mlflow.active_run()
        self.experiment_id = self.parent.info.experiment_id
        self.reuse = reuse
        self.checkpoint_dir = checkpoint_dir

    def run(self, request: StepRequest) -> Run:
        candidates = matching_runs(self.client, self.experiment_id, request)
        if self.reuse and request.reusable and (done := finished_run(candidates)):
            log.info("%s: reusing finished run %s", request.entry_point, done.info.run_id)
            mlflow.set_tag(f"unet_person.reused.{request.entry_point}", done.info.run_id)
            return done
        resumed = None
        if request.entry_point == "train":
            resumed = interrupted_training(candidates, self.checkpoint_dir)
        if resumed:
            run_id = resumed.info.run_id
            log.info("%s: resuming interrupted run %s from its checkpoint", "train", run_id)
            self.client.set_tag(run_id, MLFLOW_PARENT_RUN_ID, self.parent.info.run_id)
        else:
            run_id = self._create_child(request)
        exit_code = run_step(
            request.entry_point,
            as_text(request.params),
            {
                "MLFLOW_RUN_ID": run_id,
                "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
                "MLFLOW_EXPERIMENT_ID": self.experiment_id,
            },
        )
        run = self.client.get_run(run_id)
        if exit_code != 0:
            if run.info.status == RunStatus.to_string(RunStatus.RUNNING):
                self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
            raise PipelineError(
                f"step {request.entry_point} failed with exit code {exit_code} (run {run_id}); "
                "its message is above. Finished steps are kept and reused on the next run"
            )
        return run

    def _create_child(self, request: StepRequest) -> str:
        """A child run with its params logged up front, as `mlflow run` does."""
        run = self.client.create_run(
            self.experiment_id,
            tags={
                **request.identity_tags(),
                MLFLOW_PARENT_RUN_ID: self.parent.info.run_id,
                MLFLOW_RUN_NAME: request.entry_point,
            },
        )
        for key, value in as_text(request.params).items():
            self.client.log_param(run.info.run_id, key, value)
        return run.info.run_id


def _absolute(location: str) -> str:
    """Paths as absolute ones, since steps run in the project folder; URIs and handles as given."""
    if "://" in location or location.startswith(("runs:/", "models:/")):
        return location
    return str(Path(location).expanduser().resolve())


def run_pipeline(params: MainParams) -> dict[str, float]:
    """download → preprocess → train → evaluate → promote; returns the test metrics."""
    checkpoint_dir = Path(_absolute(params.checkpoint_dir))
    workflow = Workflow(params.reuse, checkpoint_dir)
    source = params.source
    if source_kind(source) in ("folder", "zip"):
        source = _absolute(source)
    raw_dir, processed_dir = _absolute(params.raw_dir), _absolute(params.processed_dir)

    download = workflow.run(
        StepRequest(
            "download",
            DownloadParams(source=source, output_dir=raw_dir, log_data=params.log_data),
            source_fingerprint(source),
        )
    )
    preprocess = workflow.run(
        StepRequest(
            "preprocess",
            PreprocessParams(
                raw_dir=raw_dir,
                output_dir=processed_dir,
                image_size=params.image_size,
                val_fraction=params.val_fraction,
                test_fraction=params.test_fraction,
                seed=params.split_seed,
                strict=params.strict,
                log_data=params.log_data,
            ),
            download.data.tags[OUTPUT_DIGEST_TAG],
        )
    )
    data_digest = preprocess.data.tags[OUTPUT_DIGEST_TAG]
    train = workflow.run(
        StepRequest(
            "train",
            TrainParams(
                data_dir=processed_dir,
                max_epochs=params.max_epochs,
                batch_size=params.batch_size,
                lr=params.lr,
                base_channels=params.base_channels,
                depth=params.depth,
                patience=params.patience,
                seed=params.seed,
                precision=params.precision,
                accelerator=params.accelerator,
                devices=params.devices,
                num_workers=params.num_workers,
                max_time=params.max_time,
                checkpoint_dir=str(checkpoint_dir),
            ),
            data_digest,
        )
    )
    model_uri = train.data.tags[MODEL_URI_TAG]
    evaluate = workflow.run(
        StepRequest(
            "evaluate", EvaluateParams(model_uri=model_uri, data_dir=processed_dir), data_digest
        )
    )
    metrics = {
        key: value for key, value in evaluate.data.metrics.items() if key.startswith("test_")
    }
    if "test_dice" not in metrics:
        raise PipelineError(f"evaluate run {evaluate.info.run_id} logged no test_dice")
    mlflow.set_tag(MODEL_URI_TAG, model_uri)
    mlflow.log_metrics(metrics)
    if params.promote:
        _promote(workflow, params, model_uri, processed_dir, data_digest)
    return metrics


def _promote(
    workflow: Workflow, params: MainParams, model_uri: str, processed_dir: str, data_digest: str
) -> None:
    """Never reused: who holds the alias may have changed since any earlier promote run."""
    promote = workflow.run(
        StepRequest(
            "promote",
            PromoteParams(
                model_uri=model_uri,
                model_name=params.model_name,
                alias=params.alias,
                min_improvement=params.min_improvement,
                min_dice=params.min_dice,
                data_dir=processed_dir,
            ),
            data_digest,
            reusable=False,
        )
    )
    tags = promote.data.tags
    mlflow.set_tags({key: tags[key] for key in (DECISION_TAG, MODEL_VERSION_TAG)})
    log.info(
        "promote: %s version %s %s (%s)",
        params.model_name,
        tags[MODEL_VERSION_TAG],
        tags[DECISION_TAG],
        tags[REASON_TAG],
    )
