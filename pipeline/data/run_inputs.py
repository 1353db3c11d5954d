"""Show which data a run used in MLflow's dataset tracking, keyed by the cache's digest."""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
import numpy as np
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.types.schema import Schema, TensorSpec

from pipeline.data.cache import S3_SCHEME, Processed, is_shards, open_split


def _source(cache: Processed) -> DatasetSource:
    uri = str(cache) if str(cache).startswith(S3_SCHEME) else Path(cache).resolve().as_uri()
    with warnings.catch_warnings():
        # MLflow registers its local artifact source twice, then warns that the two are ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        return resolve_dataset_source(uri)


def log_split_inputs(cache: Processed, record: dict, splits: tuple[str, ...]) -> dict[str, Dataset]:
    """Log each split as a dataset input of the active run, with its schema, size and digest.

    Returns the datasets by split, to link metrics to the one they were measured on. Shards
    are described by their schema alone (MLflow would read every sample to profile them).
    """
    source = _source(cache)
    datasets = {}
    for split in splits:
        name, digest = f"person-{split}", f"{record['digest'][:12]}-{split}"
        if is_shards(cache):
            side = record["image_size"]
            schema = Schema(
                [
                    TensorSpec(np.dtype(np.uint8), (-1, side, side, 3), "image"),
                    TensorSpec(np.dtype(np.uint8), (-1, side, side), "mask"),
                ]
            )
            dataset = MetaDataset(source, name=name, digest=digest, schema=schema)
        else:
            images, masks = open_split(cache, split)
            dataset = mlflow.data.from_numpy(
                features=images, targets=masks, source=source, name=name, digest=digest
            )
        mlflow.log_input(dataset, context=split)
        datasets[split] = dataset
    return datasets
