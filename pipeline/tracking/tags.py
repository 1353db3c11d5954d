"""The one home of every tag name the pipeline writes or searches: run tags, model-version tags
and experiment tags.

Stored runs, registered versions, search filters, the README and the tests all spell these
names, so a value here never changes. Each comment says who writes the tag and who reads it
("people" means it is there for the MLflow UI and whoever inspects a run; no code reads it).
The tag values that mean something (a decision's outcome, the experiment kind) stay with the
code that decides them. MLflow's own run tags that the pipeline only sets in passing
(`mlflow.parentRunId`, `mlflow.runName`) come from `mlflow.utils.mlflow_tags`.

This module sits at the bottom layer: it imports nothing, least of all from `pipeline`.
"""

from __future__ import annotations

# Every tag of the pipeline's own begins with this; benchmarks/gpu_pipeline.py reports all
# of a train run's tags that do.
TAG_NAMESPACE = "unet_person."

# --- Run bookkeeping: on every step run, and on the experiment -------------------------------

# MLflow's own tag (`mlflow run` sets it); written by step_run (entrypoints/runner.py) on a step
# run by hand, and by StepRequest.identity_tags (orchestration/reuse.py) on the child runs `main`
# creates; read by reuse (orchestration/reuse.py) to match and check finished steps, by
# registry/history.py to find promote runs, and by benchmarks/gpu_pipeline.py.
ENTRY_POINT_TAG = "mlflow.project.entryPoint"
# Written by step_run (entrypoints/runner.py) and StepRequest.identity_tags
# (orchestration/reuse.py); read by reuse (orchestration/reuse.py): only a run of the same code
# can stand in for a step.
CODE_TAG = "unet_person.code_digest"
# Written by step_run (entrypoints/runner.py) with the message of a step that fails; read by
# Workflow (orchestration/workflow.py) to say how a resumed train run ended, then deleted.
ERROR_TAG = "unet_person.error"
# Written by lease (tracking/lease.py), renewed while a step works, and by Workflow._create_child
# (orchestration/workflow.py) and slurm/open_run.py on a run before its step starts; read by
# close_abandoned_runs (tracking/lease.py) to close runs whose process is gone.
HEARTBEAT_TAG = "unet_person.heartbeat"
# Written by close_abandoned_runs (tracking/lease.py) with why it closed a run; read by
# Workflow (orchestration/workflow.py) to say how a resumed train run ended, then deleted.
CLOSED_TAG = "unet_person.closed_because"
# Written by Workflow.run (orchestration/workflow.py) on a train run it resumes from its
# checkpoint: how the interrupted attempt ended; read by people.
RESUMED_TAG = "unet_person.resumed_after"
# Written by step_run (entrypoints/runner.py) on a run whose step stopped on purpose before its
# end (a `tune` trial its pruner stopped), with why; read by reuse (orchestration/reuse.py), which
# never resumes such a run, and by `tune`, which counts it as a pruned trial.
ENDED_EARLY_TAG = "unet_person.ended_early"
# Written by tune (orchestration/tuning.py) on each trial's train run: `<study name>#<trial
# number>`; read by people.
TRIAL_TAG = "unet_person.trial"
# Written by tune on its own run: the study's name and storage (password masked), the best
# trial's number and its train run; read by people.
STUDY_TAG = "unet_person.study_name"
STORAGE_TAG = "unet_person.storage"
BEST_TRIAL_TAG = "unet_person.best_trial"
BEST_RUN_TAG = "unet_person.best_run"
# Written by fit (training/fit.py) on a train run whose checkpoints could not all be read: which
# were set aside (renamed, never deleted) and where training went on from; read by people.
CHECKPOINT_SET_ASIDE_TAG = "unet_person.checkpoint_set_aside"
# `unet_person.reused.<entry point>`: written by Workflow.run (orchestration/workflow.py) on the
# parent run (`main`, `ablate`) with the id of the finished run it reused for that step; read by
# people.
REUSED_TAG_PREFIX = "unet_person.reused."
# Written by log_settings (entrypoints/runner.py) on train runs: the recipe that trained it;
# read by people (the `resolved.*` params say what the recipe resolved to).
RECIPE_TAG = "unet_person.recipe"
# An experiment tag (MLflow's name): the MLflow UI opens an experiment in its GenAI view unless
# told this is model training. Written by mark_as_model_training (tracking/runs.py) unless set;
# read by it to leave a kind someone chose, and by the MLflow UI.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


def reused_tag(entry_point: str) -> str:
    """The parent run's tag naming the run it reused for `entry_point` (see REUSED_TAG_PREFIX)."""
    return REUSED_TAG_PREFIX + entry_point


# --- Step products and reuse ---------------------------------------------------------------

# Written by StepRequest.identity_tags (orchestration/reuse.py) on child runs: a fingerprint of
# what the step reads; read by matching_runs (orchestration/reuse.py) in its search filter.
INPUT_TAG = "unet_person.input_fingerprint"
# Written by the download and preprocess entry points (entrypoints/): the digest of the folder
# they produced; read by reuse (orchestration/reuse.py), checked against the folder's marker,
# and by prepare_data (orchestration/workflow.py) as the next step's input fingerprint.
OUTPUT_DIGEST_TAG = "unet_person.output_digest"
# Written by the download and preprocess entry points: where that folder is; read by reuse
# (orchestration/reuse.py) to check it is still there and unchanged.
OUTPUT_PATH_TAG = "unet_person.output_path"
# Written by the preprocess (the raw data's digest), train, evaluate (the split's digest) entry
# points and by promote (registry/promote.py) on its run; read by finished_evaluation
# (registry/scores.py) to find an evaluate run of the candidate on the same split.
INPUT_DIGEST_TAG = "unet_person.input_digest"
# Written by log_segmentation_model (tracking/models.py) on the train run, and by run_pipeline
# (orchestration/workflow.py) on `main`'s run; read by reuse (orchestration/reuse.py) as the
# train step's product (still loadable?) and by train_and_evaluate (orchestration/workflow.py)
# to hand the model to evaluate and promote.
MODEL_URI_TAG = "unet_person.model_uri"
# Written by the download entry point (entrypoints/download.py): what kind of source it landed;
# read by people.
SOURCE_KIND_TAG = "unet_person.source_kind"
# Written by the evaluate entry point (entrypoints/evaluate.py): the model URI it evaluated;
# read by people.
EVALUATED_MODEL_TAG = "unet_person.evaluated_model"
# Written by the evaluate entry point: the logged model's id; read by finished_evaluation
# (registry/scores.py) so promote reuses a Dice already measured.
EVALUATED_MODEL_ID_TAG = "unet_person.evaluated_model_id"
# Written by the export entry point (entrypoints/export.py): the logged model's id; read by
# people.
EXPORTED_MODEL_TAG = "unet_person.exported_model_id"
# Written by the predict entry point (entrypoints/predict.py): the logged model's id; read by
# people.
PREDICTED_WITH_TAG = "unet_person.predicted_with"

# --- Training hardware ----------------------------------------------------------------------
# All written by fit (training/fit.py) on the train run, once, by the first process of a fresh
# run (tags, not params: a run resumed elsewhere may resolve them differently); read by people
# and reported by benchmarks/gpu_pipeline.py.

PRECISION_TAG = "unet_person.precision"
NUM_WORKERS_TAG = "unet_person.num_workers"
DEVICE_TAG = "unet_person.device"  # the GPU's name, or "cpu"
CHANNELS_LAST_TAG = "unet_person.channels_last"
COMPILE_TAG = "unet_person.compile"  # "false", "inductor:<mode>" or "aot_eager"
CUDNN_BENCHMARK_TAG = "unet_person.cudnn_benchmark"
STRATEGY_TAG = "unet_person.strategy"  # Lightning's strategy class
WORLD_SIZE_TAG = "unet_person.world_size"  # training processes
GLOBAL_BATCH_TAG = "unet_person.global_batch"  # batch_size times world size

# --- Promotion decision ---------------------------------------------------------------------
# The decision record: written by promote (registry/promote.py, Promotion.tags) on every promote
# run, and on the candidate's model version when the decision changes something.

# Read by promote (registry/promote.py: has the version a decision yet?), by _promote
# (orchestration/workflow.py), which copies it onto `main`'s run, by its summary
# (orchestration/summary.py) and by registry/history.py, which searches for `promoted`.
DECISION_TAG = "unet_person.decision"
# Why; read by _promote (orchestration/workflow.py), summary.py and registry/history.py.
REASON_TAG = "unet_person.reason"
# The candidate's test Dice; read by registry/history.py and the demo's model card
# (demo/model_card.py).
CANDIDATE_DICE_TAG = "unet_person.candidate_dice"
# The evaluate run that measured that Dice, or "this run"; read by people.
CANDIDATE_SOURCE_TAG = "unet_person.candidate_dice_from"
# The version that held the alias, or "none"; read by registry/history.py.
CHAMPION_VERSION_TAG = "unet_person.champion_version"
# Its test Dice on the same split, or "none"; read by registry/history.py.
CHAMPION_DICE_TAG = "unet_person.champion_dice"
# The evaluate run that measured it, "this run" or "none"; read by people.
CHAMPION_SOURCE_TAG = "unet_person.champion_dice_from"
# The split both were scored on; read by people.
SPLIT_DIGEST_TAG = "unet_person.split_digest"
# The promote run that decided; read by people (from a version back to its run).
PROMOTE_RUN_TAG = "unet_person.promote_run_id"
# Written by record_on_run (registry/promote.py) on the promote run only: the candidate's
# version; read by _promote (orchestration/workflow.py), which copies it onto `main`'s run, its
# summary (orchestration/summary.py) and registry/history.py.
MODEL_VERSION_TAG = "unet_person.model_version"

# --- Study ----------------------------------------------------------------------------------
# Written by run_study (orchestration/ablation.py) as labels on each train and evaluate child
# run of `ablate`; read by people (they play no part in matching runs for reuse).

VARIANT_TAG = "unet_person.variant"  # the variant's name
SEED_TAG = "unet_person.seed"
STUDY_TAG = "unet_person.study"  # the `ablate` parent run's id
