"""`main`: the steps as child runs of one parent, reusing what is already done."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from pipeline.data.download import source_fingerprint, source_kind
from pipeline.errors import ENDED_EARLY_EXIT, TRACKING_AWAY_EXIT, PipelineError
from pipeline.orchestration.project import StepInterrupted, run_step
from pipeline.orchestration.reuse import (
    StepRequest,
    finished_run,
    interrupted_training,
    matching_runs,
)
from pipeline.params import (
    DataSourceParams,
    DownloadParams,
    EvaluateParams,
    PreprocessParams,
    PromoteParams,
    as_text,
    passed_on,
)
from pipeline.tracking.artifacts import is_artifact_uri
from pipeline.tracking.lease import close_abandoned_runs, heartbeat_tag
from pipeline.tracking.models import link_model_to_run
from pipeline.tracking.runs import wait_for_server
from pipeline.tracking.tags import (
    CLOSED_TAG,
    DECISION_TAG,
    ERROR_TAG,
    MODEL_URI_TAG,
    MODEL_VERSION_TAG,
    OUTPUT_DIGEST_TAG,
    REASON_TAG,
    RESUMED_TAG,
    reused_tag,
)
from pipeline.training.runtime import RuntimeConfig
from pipeline.training_params import MainParams, TrainingParams, TrainParams

log = logging.getLogger("unet_person")

# Times a train step stopped by a tracking outage runs again (each once the server answers):
# a server that keeps going away is a fault to report, not to wait out for ever.
TRACKING_AWAY_RETRIES = 5


@dataclass(frozen=True)
class StepDone:
    entry_point: str
    run_id: str
    how: str  # reused, resumed or new


class Workflow:
    """Runs steps as children of the active run, each in its own process like `mlflow run`."""

    def __init__(self, reuse: bool, checkpoint_dir: Path) -> None:
        self.client = MlflowClient()
        self.parent = mlflow.active_run()
        self.experiment_id = self.parent.info.experiment_id
        self.reuse = reuse
        self.checkpoint_dir = checkpoint_dir
        self.done: list[StepDone] = []  # what each step did, for main's summary

    def run(self, request: StepRequest, environment: dict[str, str] | None = None) -> Run:
        """The step's run: a finished one reused, an interrupted one resumed, or a new one;
        `environment` goes to the step's process besides the run's own variables. A step that
        ended early on purpose (a pruned trial) returns its KILLED run."""
        wait_for_server(f"step {request.entry_point}")
        # A run whose process died (a killed `tune` worker's trial) is closed first, so that
        # its training is resumed rather than begun again.
        close_abandoned_runs(self.client, self.experiment_id)
        candidates = matching_runs(self.client, self.experiment_id, request)
        if self.reuse and request.reusable and (done := finished_run(candidates)):
            return self._reused(request, done)
        resumed = (
            interrupted_training(candidates, self.checkpoint_dir) if request.resumable else None
        )
        run_id = self._resumed(request, resumed) if resumed else self._create_child(request)
        exit_code = self._run_process(request, run_id, environment or {})
        wait_for_server(f"the result of step {request.entry_point}")
        if exit_code == ENDED_EARLY_EXIT:
            self.done.append(StepDone(request.entry_point, run_id, "ended early"))
            return self.client.get_run(run_id)
        if exit_code != 0:
            self._close_if_running(run_id, RunStatus.FAILED)
            raise PipelineError(
                f"step {request.entry_point} failed with exit code {exit_code} (run {run_id}); "
                "its message is above. Finished steps are kept and reused on the next run"
            )
        self.done.append(StepDone(request.entry_point, run_id, "resumed" if resumed else "new"))
        return self.client.get_run(run_id)

    def _reused(self, request: StepRequest, done: Run) -> Run:
        log.info("%s: reusing finished run %s", request.entry_point, done.info.run_id)
        self.client.set_tag(
            self.parent.info.run_id, reused_tag(request.entry_point), done.info.run_id
        )
        self.done.append(StepDone(request.entry_point, done.info.run_id, "reused"))
        return done

    def _resumed(self, request: StepRequest, resumed: Run) -> str:
        """The interrupted run, a child of this parent now, without the tags of its last end."""
        run_id = resumed.info.run_id
        log.info("%s: resuming interrupted run %s from its checkpoint", request.entry_point, run_id)
        self.client.set_tag(run_id, MLFLOW_PARENT_RUN_ID, self.parent.info.run_id)
        self.client.set_tag(run_id, RESUMED_TAG, _how_it_ended(resumed))
        for stale in {CLOSED_TAG, ERROR_TAG} & resumed.data.tags.keys():
            self.client.delete_tag(run_id, stale)  # they describe the attempt that ended
        return run_id

    def _run_process(self, request: StepRequest, run_id: str, environment: dict[str, str]) -> int:
        """The step's exit code. A resumable step caught outside its journal by an outage
        (starting while the server went away, say) goes on once it is back, in the same run."""
        step_environment = {
            **environment,
            "MLFLOW_RUN_ID": run_id,
            "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
            "MLFLOW_EXPERIMENT_ID": self.experiment_id,
        }
        params = as_text(request.params)
        try:
            exit_code = run_step(request.entry_point, params, step_environment)
            retries = TRACKING_AWAY_RETRIES if request.resumable else 0
            while exit_code == TRACKING_AWAY_EXIT and retries:
                retries -= 1
                log.warning(
                    "%s: run %s stopped by the tracking outage; it goes on",
                    request.entry_point,
                    run_id,
                )
                wait_for_server(f"step {request.entry_point} again into run {run_id}")
                exit_code = run_step(request.entry_point, params, step_environment)
        except StepInterrupted:
            wait_for_server(f"closing run {run_id}")
            self._close_if_running(run_id, RunStatus.KILLED)
            raise
        return exit_code

    def _close_if_running(self, run_id: str, status: int) -> None:
        """End a run its step left open (one that died before it could end it itself)."""
        if self.client.get_run(run_id).info.status == RunStatus.to_string(RunStatus.RUNNING):
            self.client.set_terminated(run_id, RunStatus.to_string(status))

    def _create_child(self, request: StepRequest) -> str:
        """A child run with its params logged up front, as `mlflow run` does."""
        run = self.client.create_run(
            self.experiment_id,
            tags={
                **request.labels,
                **request.identity_tags(),
                **heartbeat_tag(),  # closable as abandoned should its step never start
                MLFLOW_PARENT_RUN_ID: self.parent.info.run_id,
                MLFLOW_RUN_NAME: request.run_name or request.entry_point,
            },
        )
        for key, value in as_text(request.params).items():
            self.client.log_param(run.info.run_id, key, value)
        return run.info.run_id


def _how_it_ended(run: Run) -> str:
    """What stopped an interrupted run, kept on it as it resumes (its error tags then go)."""
    tags = run.data.tags
    reason = tags.get(CLOSED_TAG) or tags.get(ERROR_TAG) or "no reason recorded"
    return f"{run.info.status}: {reason}"[:5000]


def absolute_path(location: str) -> str:
    """Paths as absolute ones, since steps run in the project folder; URIs and handles as given."""
    if is_artifact_uri(location):
        return location
    return str(Path(location).expanduser().resolve())


@dataclass(frozen=True)
class PreparedData:
    """The preprocessed split cache every train and evaluate step reads, and its digest."""

    processed_dir: str
    digest: str


@dataclass(frozen=True)
class TrainedModel:
    train: Run
    evaluate: Run
    model_uri: str
    test_metrics: dict[str, float]


def prepare_data(workflow: Workflow, params: DataSourceParams) -> PreparedData:
    """download → preprocess, each reused when already done."""
    source = params.source
    if source_kind(source) in ("folder", "zip"):
        source = absolute_path(source)
    raw_dir, processed_dir = absolute_path(params.raw_dir), absolute_path(params.processed_dir)
    download = workflow.run(
        StepRequest(
            "download",
            passed_on(params, DownloadParams, source=source, output_dir=raw_dir),
            source_fingerprint(source),
        )
    )
    preprocess = workflow.run(
        StepRequest(
            "preprocess",
            passed_on(
                params,
                PreprocessParams,
                raw_dir=raw_dir,
                output_dir=processed_dir,
                log_data=params.log_data,  # download's, passed to both
            ),
            download.data.tags[OUTPUT_DIGEST_TAG],
        )
    )
    return PreparedData(processed_dir, preprocess.data.tags[OUTPUT_DIGEST_TAG])


def train_params(
    data: PreparedData, runtime: RuntimeConfig, training: TrainingParams
) -> TrainParams:
    """A train step's params: the data, the runtime (its checkpoint folder made absolute: the
    step may run elsewhere) and what to fit."""
    runtime = dataclasses.replace(runtime, checkpoint_dir=absolute_path(runtime.checkpoint_dir))
    return TrainParams(training=training, runtime=runtime, data_dir=data.processed_dir)


def train_request(
    params: TrainParams, data: PreparedData, run_name: str | None, labels: dict[str, str]
) -> StepRequest:
    """A train step: resumed from its checkpoints where a run of it was interrupted."""
    return StepRequest(
        "train", params, data.digest, resumable=True, run_name=run_name, labels=labels
    )


def train_and_evaluate(
    workflow: Workflow,
    params: TrainParams,
    data: PreparedData,
    run_name: str | None = None,
    labels: dict[str, str] | None = None,
) -> TrainedModel:
    """train → evaluate on the test split; `run_name` and `labels` mark both new runs."""
    labels = labels or {}
    train = workflow.run(train_request(params, data, run_name, labels))
    model_uri = train.data.tags[MODEL_URI_TAG]
    evaluate, metrics = evaluate_model(workflow, model_uri, data, run_name, labels)
    return TrainedModel(train, evaluate, model_uri, metrics)


def evaluate_model(
    workflow: Workflow,
    model_uri: str,
    data: PreparedData,
    run_name: str | None = None,
    labels: dict[str, str] | None = None,
) -> tuple[Run, dict[str, float]]:
    """evaluate on the test split: its run and test metrics."""
    evaluate = workflow.run(
        StepRequest(
            "evaluate",
            EvaluateParams(model_uri=model_uri, data_dir=data.processed_dir),
            data.digest,
            run_name=run_name and f"evaluate {run_name}",
            labels=labels or {},
        )
    )
    metrics = {
        key: value for key, value in evaluate.data.metrics.items() if key.startswith("test_")
    }
    if "test_dice" not in metrics:
        raise PipelineError(f"evaluate run {evaluate.info.run_id} logged no test_dice")
    return evaluate, metrics


@dataclass(frozen=True)
class PipelineOutcome:
    steps: list[StepDone]
    test_metrics: dict[str, float]
    best_val_dice: float
    promotion: dict[str, str]  # the promote run's decision tags; empty without promote


def run_pipeline(params: MainParams) -> PipelineOutcome:
    """download → preprocess → train → evaluate → promote, told on the parent run as well, so
    its one row in the UI shows the test metrics, best val Dice and the promotion decision."""
    workflow = Workflow(params.reuse, Path(absolute_path(params.runtime.checkpoint_dir)))
    data = prepare_data(workflow, params.data)
    trained = train_and_evaluate(
        workflow, train_params(data, params.runtime, params.training), data
    )
    best_val_dice = trained.train.data.metrics["best_val_dice"]
    link_model_to_run(trained.model_uri)
    mlflow.log_metrics({**trained.test_metrics, "best_val_dice": best_val_dice})
    promotion = promote_model(workflow, params, trained.model_uri, data) if params.promote else {}
    return PipelineOutcome(workflow.done, trained.test_metrics, best_val_dice, promotion)


def promote_model(
    workflow: Workflow, params: MainParams, model_uri: str, data: PreparedData
) -> dict[str, str]:
    """promote `model_uri` as `params` say (main's or tune's promotion params). Never reused:
    who holds the alias may have changed since any earlier promote run."""
    promote = workflow.run(
        StepRequest(
            "promote",
            passed_on(params, PromoteParams, model_uri=model_uri, data_dir=data.processed_dir),
            data.digest,
            reusable=False,
        )
    )
    decision = {key: promote.data.tags[key] for key in (DECISION_TAG, MODEL_VERSION_TAG)}
    mlflow.set_tags(decision)
    return {**decision, REASON_TAG: promote.data.tags[REASON_TAG]}
