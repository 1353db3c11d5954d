"""Entry point `preprocess`: build the split cache that training memory-maps."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import mlflow
import pandas as pd

from pipeline.console import log
from pipeline.data.cache import (
    MANIFEST_FILE,
    SHARDS,
    SPLITS,
    read_manifest_text,
)
from pipeline.data.preprocess import PreprocessReport, preprocess, record_of
from pipeline.data.run_inputs import log_split_inputs
from pipeline.entrypoints.runner import run_entry_point
from pipeline.params import PreprocessParams
from pipeline.tracking.artifacts import local_input
from pipeline.tracking.tags import INPUT_DIGEST_TAG, OUTPUT_DIGEST_TAG, OUTPUT_PATH_TAG

PARAMS = PreprocessParams


def run(params: PreprocessParams) -> None:
    shards = params.output_format == SHARDS
    if shards:
        from pipeline.data.shard_writer import preprocess_to_shards as write
        from pipeline.data.shard_writer import writing
    else:
        write, writing = preprocess, lambda _: nullcontext()
    # Read back under the writer's lock: a second preprocess into the same S3 prefix would
    # otherwise remove the record between the write and the logging.
    with writing(params.output_dir):
        report = write(
            raw_dir=local_input(params.raw_dir, "raw_dir"),
            output_dir=params.output_dir if shards else Path(params.output_dir),
            image_size=params.image_size,
            val_fraction=params.val_fraction,
            test_fraction=params.test_fraction,
            seed=params.seed,
            strict=params.strict,
            num_workers=params.num_workers,
            max_pixels=params.max_pixels,
        )
        log_report(report, record_of(report, params.image_size, params.output_format))
    if params.log_data and not shards:  # shards live where they were written, often S3
        mlflow.log_artifacts(str(report.output_dir), artifact_path="processed")


def log_report(report: PreprocessReport, record: dict) -> None:
    """The step's figures, manifest, bad rows and split inputs, into its run; `record` is what
    the writer wrote last (reading it back would check every chunk just checked)."""
    for name, split in report.splits.items():
        log.info("%s: %d images, foreground %.3f", name, split.rows, split.foreground_fraction)
    mlflow.set_tags(
        {
            OUTPUT_DIGEST_TAG: report.digest,
            INPUT_DIGEST_TAG: report.raw_digest,
            OUTPUT_PATH_TAG: str(report.output_dir),
        }
    )
    mlflow.log_metrics(
        {
            **{f"{name}_images": split.rows for name, split in report.splits.items()},
            **{
                f"{name}_foreground_fraction": split.foreground_fraction
                for name, split in report.splits.items()
            },
            "bad_rows": len(report.bad_rows),
            "rescaled_masks": report.resized_masks,
        }
    )
    mlflow.log_text(read_manifest_text(report.output_dir), MANIFEST_FILE)
    if report.bad_rows:
        log.warning("%d bad rows skipped, listed in bad_rows.csv", len(report.bad_rows))
        bad_rows = pd.DataFrame(report.bad_rows, columns=["row", "image", "mask", "reason"])
        mlflow.log_text(bad_rows.to_csv(index=False), "bad_rows.csv")
    log_split_inputs(report.output_dir, record, SPLITS)


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(__name__, PARAMS, run, argv)
