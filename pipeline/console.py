"""What a run prints: our own lines, one progress bar per long step where a terminal shows it,
and none of the libraries' tips and deprecation notices, which say nothing about this run."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any

from tqdm import tqdm

# The project's logger: what a step reports, as one line each.
log = logging.getLogger("unet_person")

# Warnings that are noise for a person running the pipeline, each with why.
SILENCED_WARNINGS = (
    # Lightning 2.6's own pytree helper uses a torch API that torch 2.13 deprecates.
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # The train run's checkpoint folder holds its journal and the checkpoints a resumed run
    # continues from, on purpose.
    r"Checkpoint directory .* exists and is not empty",
    # PySpark 4's caution about pandas 3 for every pandas UDF; predict_spark's tests run its
    # UDFs on pandas 3 and compare every mask and row with predict's.
    r"PySpark does not yet fully support pandas",
)
# What Lightning's rank-zero logger says once per Trainer that tells nobody anything: its cloud
# logger's advertisement, the accelerators a CPU or CUDA machine never has, and the one-cycle
# schedule's step count being worked out.
LIGHTNING_NOISE = (
    "💡 Tip:",
    "TPU available",
    "HPU available",
    "IPU available",
    "Loading `train_dataloader` to estimate number of stepping batches",
)


# LitData's cautions: one said for any cache under 25 GB (the peak is about two 64 MB chunks
# per loader worker, and cache_size bounds it anyway), one for validation split across ranks
# without dropping images (no gradients meet there; dropping them would skew val Dice).
LITDATA_NOISE = (
    "The provided `max_cache_size` is less than 25GB",
    "You're operating within a distributed environment and have disabled the `drop_last`",
)


def _no_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(LIGHTNING_NOISE + LITDATA_NOISE)


def quiet_libraries() -> None:
    """Silence the noise; called once at the start of every command."""
    for message in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in ("lightning.pytorch.utilities.rank_zero", "litdata.streaming.dataset"):
        logging.getLogger(name).addFilter(_no_noise)
    # The ONNX exporter's graph passes log each step at INFO (train and export run them).
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow draws a bar for every artifact download, two for one model load (its nested
    # downloads); the step that loads the model has its own. The user's setting wins.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def progress(iterable: Any = None, **options: Any) -> tqdm:
    """A tqdm bar on a terminal; nothing in logs (CI, `mlflow run`), where bars are noise."""
    return tqdm(iterable, disable=not sys.stderr.isatty(), **options)
