"""Entry point `download`: land the dataset and record where it came from."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd

from pipeline.console import log
from pipeline.data.download import land_dataset
from pipeline.entrypoints.runner import run_entry_point
from pipeline.params import DownloadParams
from pipeline.tracking.artifacts import cache_root
from pipeline.tracking.tags import OUTPUT_DIGEST_TAG, OUTPUT_PATH_TAG, SOURCE_KIND_TAG

PARAMS = DownloadParams


def run(params: DownloadParams) -> None:
    landed = land_dataset(params.source, Path(params.output_dir), cache_root() / "downloads")
    log.info(
        "dataset at %s: %d rows, %d usable%s",
        landed.path,
        landed.rows,
        landed.usable_rows,
        " (already there)" if landed.reused else "",
    )
    mlflow.set_tags(
        {
            SOURCE_KIND_TAG: landed.kind,
            OUTPUT_DIGEST_TAG: landed.digest,
            OUTPUT_PATH_TAG: str(landed.path),
        }
    )
    mlflow.log_metrics(
        {
            "rows": landed.rows,
            "usable_rows": landed.usable_rows,
            "rows_with_problems": len(landed.problems),
        }
    )
    if landed.problems:
        log.warning("%d rows have problems, listed in problems.csv", len(landed.problems))
        problems = pd.DataFrame(landed.problems, columns=["row", "reason"])
        mlflow.log_text(problems.to_csv(index=False), "problems.csv")
    if params.log_data:
        mlflow.log_artifacts(str(landed.path), artifact_path="dataset")


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(__name__, PARAMS, run, argv)
