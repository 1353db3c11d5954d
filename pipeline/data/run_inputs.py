"""Show which data a run used in MLflow's dataset tracking, keyed by the cache's digest."""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source

from pipeline.data.cache import open_split


def _local_source(folder: Path) -> DatasetSource:
    with warnings.catch_warnings():
        # MLflow registers its local artifact source twice, then warns that the two are ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        return resolve_dataset_source(folder.resolve().as_uri())


def log_split_inputs(cache: Path, record: dict, splits: tuple[str, ...]) -> dict[str, Dataset]:
    """Log each split as a dataset input of the active run, with its schema, size and digest.

    Returns the datasets by split, to link metrics to the one they were measured on.
    """
    source = _local_source(cache)
    datasets = {}
    for split in splits:
        images, masks = open_split(cache, split)
        dataset = mlflow.data.from_numpy(
            features=images,
            targets=masks,
            source=source,
            name=f"person-{split}",
            digest=f"{record['digest'][:12]}-{split}",
        )
        mlflow.log_input(dataset, context=split)
        datasets[split] = dataset
    return datasets
