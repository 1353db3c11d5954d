"""Entry point `train`: fit the U-Net and log the best model into the run."""

from __future__ import annotations

import dataclasses
import sys

import mlflow
import numpy as np

from pipeline.data.cache import open_split, read_cache_record
from pipeline.params import TrainParams
from pipeline.tracking.artifacts import local_input
from pipeline.tracking.datasets import log_split_inputs
from pipeline.tracking.models import log_segmentation_model
from pipeline.tracking.runs import INPUT_DIGEST_TAG, log, log_settings, run_entry_point
from pipeline.training.fit import checkpoint_root, fit
from pipeline.training.ranks import run_id_of_launch, sharing_run
from pipeline.training.recipes import TrainingSettings, resolve_settings


def run(params: TrainParams) -> None:
    """The first (or only) process: everything, in the run `run_entry_point` opened."""
    run_id = mlflow.active_run().info.run_id
    # Told first, so other ranks fetch their data while this one logs its inputs.
    with sharing_run(run_id, checkpoint_root(params)):
        cache = local_input(params.data_dir, "data_dir")
        record = read_cache_record(cache)
        mlflow.set_tag(INPUT_DIGEST_TAG, record["digest"])
        log_split_inputs(cache, record, ("train", "val"))
        settings = settings_of(params)
        log_settings(params.recipe, settings)
        best, summary = fit(params, settings, cache, run_id)
    mlflow.log_metrics(summary)
    example = np.array(open_split(cache, "val")[0][0])
    info = log_segmentation_model(best.net, record["image_size"], example)
    log.info("best val Dice %.4f; model at %s", summary["best_val_dice"], info.model_uri)


def run_other_rank(params: TrainParams) -> None:
    """Any other rank of a distributed fit: its share of the training, nothing logged."""
    run_id = run_id_of_launch(checkpoint_root(params))
    fit(params, settings_of(params), local_input(params.data_dir, "data_dir"), run_id)


def settings_of(params: TrainParams) -> TrainingSettings:
    return resolve_settings(params.recipe, dataclasses.asdict(params))


def main(argv: list[str] | None = None) -> int:
    return run_entry_point("train", TrainParams, run, argv, settings_of, run_other_rank)


if __name__ == "__main__":
    sys.exit(main())
