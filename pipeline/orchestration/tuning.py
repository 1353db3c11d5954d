"""`tune`: an Optuna study whose every trial is an ordinary train step, a child run of the tune
run with the reuse, lease, journal, checkpoints and resume of any train step.

A trial whose settings and data were trained before is not trained again: its finished run is
reused for its value (and a pruned one counts as pruned). Several `tune` commands with the same
study_name and storage share the study, and n_trials counts the trials of all of them. The best
trial's model is evaluated on the test split and goes through `main`'s promote.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Run
from tqdm import tqdm

from pipeline import locks
from pipeline.console import log
from pipeline.errors import PipelineError, first_line
from pipeline.orchestration.project import StepInterrupted, stops_forwarded
from pipeline.orchestration.reuse import StepRequest, matching_runs
from pipeline.orchestration.workflow import (
    PreparedData,
    Workflow,
    absolute_path,
    evaluate_model,
    prepare_data,
    promote_model,
    train_params,
    train_request,
)
from pipeline.search.space import parse_search_space, suggest
from pipeline.search.study import (
    RETRY_OF_ATTR,
    WORKER_LOCK_ATTR,
    default_storage,
    finished_trials,
    heartbeat,
    is_storage_error,
    make_sampler,
    open_study,
    state_counts,
    sweep_dead_workers_trials,
    taken_trials,
    trials_before,
)
from pipeline.tracking.artifacts import cache_root
from pipeline.tracking.models import link_model_to_run
from pipeline.tracking.runs import masked, wait_for_server
from pipeline.tracking.tags import (
    BEST_RUN_TAG,
    BEST_TRIAL_TAG,
    ENDED_EARLY_TAG,
    MODEL_URI_TAG,
    STORAGE_TAG,
    STUDY_TAG,
    TRIAL_TAG,
)
from pipeline.training.pruning import TrialLink, make_pruner
from pipeline.training_params import TuneParams

RUN_ID_ATTR = "run_id"
FAILURE_ATTR = "failure"
NOT_RUN_ATTR = "not_run"  # a trial asked for after other workers had filled n_trials
VALUE_NAME = "best val Dice"  # what a trial's value is, on the figures
WAIT_SECONDS = 2.0  # how often a worker with nothing left to ask looks at the others' trials
# Trials of one command failing one after another: the cause is no longer the settings drawn
# (a large width out of memory) but one they share, and trying more would loop forever.
FAILURES_IN_A_ROW = 5


class TrialFailed(Exception):
    """A trial's train step failed (out of memory at a large width, say): Optuna records the
    trial as failed with the reason, and the search goes on."""


@dataclass(frozen=True)
class TuneOutcome:
    best_number: int
    best_value: float
    best_params: dict[str, Any]
    best_run_id: str
    counts: dict[str, int]
    test_metrics: dict[str, float]
    promotion: dict[str, str]


def storage_of(params: TuneParams) -> str:
    return params.storage or default_storage(absolute_path(params.output_dir))


def open_tune_study(params: TuneParams, worker: str = "") -> tuple[Any, Any]:
    """The study these params search and its storage: made, or loaded and checked to search
    the same space. The sampler is seeded from `seed` and the `worker`'s name: workers seeded
    alike would draw the same first points and train each of them twice."""
    return open_study(
        storage_of(params),
        params.study_name,
        parse_search_space(params.search_space),
        make_sampler(
            params.sampler, random.Random(f"{params.training.seed}/{worker}").getrandbits(32)
        ),
        make_pruner(params.pruner, params.training.recipe_config().max_epochs),
    )


def run_tune(params: TuneParams) -> TuneOutcome:
    """Prepare the data as `main` does, search, then evaluate and promote the best trial."""
    space = parse_search_space(params.search_space)
    storage = storage_of(params)
    name = f"tune-worker-{uuid.uuid4()}"
    study, optuna_storage = open_tune_study(params, name)
    workflow = Workflow(params.reuse, Path(absolute_path(params.runtime.checkpoint_dir)))
    data = prepare_data(workflow, params.data)
    mlflow.set_tags({STUDY_TAG: params.study_name, STORAGE_TAG: masked(storage)})
    with locks.hold(cache_root() / "leases" / f"{name}.lock") as worker:
        objective = TrialObjective(workflow, params, data, space, storage, worker)
        search = Search(study, optuna_storage, objective)
        log.info("%s", search.bar.line())
        deadline = time.monotonic() + params.timeout if params.timeout else None
        with stops_forwarded(), ThreadPoolExecutor(params.workers) as pool:
            for thread in [pool.submit(search.loop, deadline) for _ in range(params.workers)]:
                try:
                    thread.result()
                except Exception as error:
                    raise storage_failure(error, storage) from error
    return _conclude(workflow, params, data, study)


def storage_failure(error: Exception, storage: str) -> Exception:
    """A study storage that fails mid-search (its database down, its disk gone) as one line
    that says how to go on; any other error as it is."""
    if not is_storage_error(error):
        return error
    return PipelineError(
        f"the Optuna storage {masked(storage)} failed ({first_line(str(error))}): the trials' "
        "train runs keep their checkpoints and metrics; once it is back, run the same tune "
        "command again: finished trials count, the interrupted ones are queued again and resume"
    )


class Search:
    """The trials of one `tune` command: each of its worker threads asks the study for a trial
    and trains it, until the study holds n_trials finished (or pruned, or running) trials."""

    def __init__(self, study: Any, storage: Any, objective: TrialObjective) -> None:
        self.study, self.storage, self.objective = study, storage, objective
        self.n_trials = objective.params.n_trials
        self.bar = TrialsBar(study, self.n_trials)
        self.lock = threading.Lock()
        self.failures_in_a_row = 0
        self.stopped = threading.Event()

    def loop(self, deadline: float | None) -> None:
        import optuna

        while not self.stopped.is_set() and (deadline is None or time.monotonic() < deadline):
            with self.lock:
                if swept := sweep_dead_workers_trials(self.study, self.storage):
                    log.warning("tune: trials %s of a dead worker failed; queued again", swept)
                if finished_trials(self.study) >= self.n_trials:
                    return
                trial = None
                if taken_trials(self.study) < self.n_trials:
                    trial = self.study.ask()
                    trial.set_user_attr(WORKER_LOCK_ATTR, str(self.objective.worker_lock))
            if trial is None:
                # The last trials run elsewhere: wait for them, so that the best trial is the
                # study's, and to take over a trial whose worker dies.
                time.sleep(WAIT_SECONDS)
                continue
            if trials_before(self.study, trial.number) >= self.n_trials:
                # Another worker asked at the same moment and filled the study.
                trial.set_user_attr(NOT_RUN_ATTR, "n_trials reached by other workers")
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                return
            with heartbeat(self.storage, self.study, trial.number):
                self._run(trial)
            log.info("%s", self.bar.line())

    def _run(self, trial: Any) -> None:
        import optuna

        try:
            value = self.objective(trial)
        except optuna.TrialPruned as pruned:
            log.info("tune: trial %d pruned: %s", trial.number, pruned)
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except TrialFailed as failure:
            trial.set_user_attr(FAILURE_ATTR, str(failure)[:2000])
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self._count_failure(failure)
            return
        except BaseException:
            # Stopped (SIGTERM, Ctrl-C) or broken: the trial is queued again, so the next
            # `tune` resumes its train run from its checkpoint.
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            self.study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})
            raise
        else:
            self.study.tell(trial, value)
        with self.lock:
            self.failures_in_a_row = 0

    def _count_failure(self, failure: TrialFailed) -> None:
        """Stop this command's search once FAILURES_IN_A_ROW trials have failed in a row."""
        with self.lock:
            self.failures_in_a_row += 1
            if self.failures_in_a_row < FAILURES_IN_A_ROW:
                return
            self.stopped.set()  # the other workers finish their trials and stop
        raise PipelineError(
            f"tune: the last {FAILURES_IN_A_ROW} trials failed, the last one with: "
            f"{first_line(str(failure))}; the search stops. Fix what they share (see the "
            "messages above), or leave the setting that fails out of search_space, and run the "
            "same tune command again: finished trials count"
        )


class TrialsBar:
    """A progress bar over the study's trials (finished, pruned, failed, best so far), printed
    as a line when a trial ends: the trials' own epoch lines, several at once, come between
    them, and would garble a bar redrawn in place. It counts every worker's trials; its rate
    and time left count the ones finished since this command began."""

    FORMAT = "{l_bar}{bar:20}| {n_fmt}/{total_fmt} trials [{elapsed}<{remaining}]{postfix}"

    def __init__(self, study: Any, n_trials: int) -> None:
        self.study, self.n_trials = study, n_trials
        self.started = time.monotonic()
        self.initial = min(finished_trials(study), n_trials)

    def line(self) -> str:
        """`tune:  67%|█████▎  | 4/6 trials [10:05<05:02], 3 complete, 1 pruned, 0 failed;
        best 0.7412 (trial 2)`."""
        counts = state_counts(self.study)
        postfix = f"{counts['complete']} complete, {counts['pruned']} pruned, "
        postfix += f"{counts['fail']} failed"
        if counts["complete"]:
            best = self.study.best_trial
            postfix += f"; best {best.value:.4f} (trial {best.number})"
        return tqdm.format_meter(
            min(counts["complete"] + counts["pruned"], self.n_trials),
            self.n_trials,
            time.monotonic() - self.started,
            prefix="tune",
            postfix=postfix,
            bar_format=self.FORMAT,
            initial=self.initial,
        )


class TrialObjective:
    """One trial: its settings from the declared ranges, trained as a train step."""

    def __init__(
        self,
        workflow: Workflow,
        params: TuneParams,
        data: PreparedData,
        space: tuple[str, ...],
        storage: str,
        worker_lock: Path,
    ) -> None:
        self.workflow, self.params, self.data = workflow, params, data
        self.space, self.storage, self.worker_lock = space, storage, worker_lock

    def __call__(self, trial: Any) -> float:
        import optuna

        settings = suggest(trial, self.space)
        training = self.params.training
        training = dataclasses.replace(training, changes={**training.changes, **settings})
        request = train_request(
            train_params(self.data, self.params.runtime, training),
            self.data,
            run_name=f"trial {trial.number}",
            labels={TRIAL_TAG: f"{self.params.study_name}#{trial.number}"},
        )
        # The runs of these settings are looked up before the step waits for the server itself.
        wait_for_server(f"trial {trial.number}")
        pruned_before = self._pruned_run(request)
        if pruned_before is not None:
            trial.set_user_attr(RUN_ID_ATTR, pruned_before.info.run_id)
            raise optuna.TrialPruned(f"run {pruned_before.info.run_id} was pruned with these")
        link = TrialLink(
            self.storage,
            self.params.study_name,
            trial.number,
            self.params.pruner,
            training.recipe_config().max_epochs,
        )
        try:
            train = self.workflow.run(request, link.to_environment())
        except StepInterrupted:
            raise
        except PipelineError as error:
            log.error("tune: trial %d failed: %s", trial.number, error)
            raise TrialFailed(str(error)) from error
        trial.set_user_attr(RUN_ID_ATTR, train.info.run_id)
        if ENDED_EARLY_TAG in train.data.tags:
            raise optuna.TrialPruned(train.data.tags[ENDED_EARLY_TAG])
        value = train.data.metrics["best_val_dice"]
        log.info("tune: trial %d: val Dice %.4f with %s", trial.number, value, settings)
        return value

    def _pruned_run(self, request: StepRequest) -> Run | None:
        """A run of these settings and data that its pruner stopped, when reuse is on."""
        if not self.params.reuse:
            return None
        candidates = matching_runs(self.workflow.client, self.workflow.experiment_id, request)
        return next((run for run in candidates if ENDED_EARLY_TAG in run.data.tags), None)


def _conclude(
    workflow: Workflow, params: TuneParams, data: PreparedData, study: Any
) -> TuneOutcome:
    """The trials' table and figures on the tune run, the best trial evaluated and promoted."""
    counts = state_counts(study)
    if not counts["complete"]:
        raise PipelineError(
            f"study {params.study_name} has no finished trial ({counts['pruned']} pruned, "
            f"{counts['fail']} failed): see the messages above, raise n_trials or timeout"
        )
    best = study.best_trial
    run_id = best.user_attrs[RUN_ID_ATTR]
    folder = Path(absolute_path(params.output_dir))
    _publish_trials(study, folder)
    mlflow.log_params({f"best.{name}": value for name, value in best.params.items()})
    mlflow.log_metrics(
        {"best_val_dice": best.value, **{f"trials_{state}": n for state, n in counts.items()}}
    )
    mlflow.set_tags({BEST_TRIAL_TAG: str(best.number), BEST_RUN_TAG: run_id})
    model_uri = workflow.client.get_run(run_id).data.tags[MODEL_URI_TAG]
    link_model_to_run(model_uri)
    _, test_metrics = evaluate_model(workflow, model_uri, data, f"best trial {best.number}")
    mlflow.log_metrics(test_metrics)
    promotion = promote_model(workflow, params, model_uri, data) if params.promote else {}
    return TuneOutcome(
        best.number, best.value, best.params, run_id, counts, test_metrics, promotion
    )


def _publish_trials(study: Any, folder: Path) -> None:
    """trials.csv and Optuna's figures into `folder` and the run's `tune/` artifacts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plots
    from optuna.importance import PedAnovaImportanceEvaluator

    folder.mkdir(parents=True, exist_ok=True)
    table: pd.DataFrame = study.trials_dataframe()
    table.to_csv(folder / "trials.csv", index=False)
    drawn = {
        "optimization_history": lambda: plots.plot_optimization_history(
            study, target_name=VALUE_NAME
        ),
        "parallel_coordinate": lambda: plots.plot_parallel_coordinate(
            study, target_name=VALUE_NAME
        ),
        # No scikit-learn needed, unlike the default fANOVA.
        "param_importances": lambda: plots.plot_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator(), target_name=VALUE_NAME
        ),
    }
    for name, draw in drawn.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = draw()
            except (ValueError, RuntimeError) as error:  # too few finished trials for it
                log.info("tune: no %s figure (%s)", name, error)
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes[0].figure
        figure.set_size_inches(10, 6)
        figure.tight_layout()
        figure.savefig(folder / f"{name}.png", dpi=100)
        plt.close(figure)
    for name in ["trials.csv", *(f"{name}.png" for name in drawn)]:
        if (folder / name).is_file():  # the journal beside them is the study's, not the run's
            mlflow.log_artifact(str(folder / name), "tune")
