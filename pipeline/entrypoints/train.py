"""Entry point `train`: fit the U-Net and log the best model into the run."""

from __future__ import annotations

import mlflow
import numpy as np

from pipeline.console import log
from pipeline.data.cache import Processed, open_split, processed_input, read_cache_record
from pipeline.data.run_inputs import log_split_inputs
from pipeline.entrypoints.runner import log_settings, run_entry_point
from pipeline.tracking.models import log_segmentation_model
from pipeline.tracking.tags import INPUT_DIGEST_TAG
from pipeline.training.fit import checkpoint_root, fit
from pipeline.training.ranks import run_id_of_launch, sharing_run
from pipeline.training.recipes import Recipe
from pipeline.training_params import TrainParams

PARAMS = TrainParams


def run(params: TrainParams) -> None:
    """The first (or only) process: everything, in the run `run_entry_point` opened."""
    run_id = mlflow.active_run().info.run_id
    # Told first, so other ranks fetch their data while this one logs its inputs.
    with sharing_run(run_id, checkpoint_root(params.runtime)):
        cache = processed_input(params.data_dir, "data_dir")
        record = read_cache_record(cache)
        mlflow.set_tag(INPUT_DIGEST_TAG, record["digest"])
        log_split_inputs(cache, record, ("train", "val"))
        recipe = params.training.recipe_config()
        log_settings(params.training.recipe, recipe.settings())
        best, summary = fit_with(params, recipe, cache, run_id)
    mlflow.log_metrics(summary)
    example = np.array(open_split(cache, "val")[0][0])
    info = log_segmentation_model(best.net, record["image_size"], example, params.training.onnx)
    log.info("best val Dice %.4f; model at %s", summary["best_val_dice"], info.model_uri)


def run_other_rank(params: TrainParams) -> None:
    """Any other rank of a distributed fit: its share of the training, nothing logged."""
    run_id = run_id_of_launch(checkpoint_root(params.runtime))
    fit_with(
        params,
        params.training.recipe_config(),
        processed_input(params.data_dir, "data_dir"),
        run_id,
    )


def fit_with(params: TrainParams, recipe: Recipe, cache: Processed, run_id: str):
    training = params.training
    return fit(recipe, params.runtime, cache, run_id, training.seed, training.grid_every)


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(__name__, PARAMS, run, argv, run_other_rank)
