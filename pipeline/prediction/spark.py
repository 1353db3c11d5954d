"""Masks for photo libraries on Apache Spark: the logged model as `mlflow.pyfunc.spark_udf`.

The driver lists the input (pipeline/locations.py: a folder or an S3 prefix) and
hands Spark the names, in partitions of `partition_photos`. Three steps run on the executors
for each partition, `batch_photos` photos at a time (Arrow batches), so an executor's memory is
bounded by a batch whatever the number of photos:

1. read each photo and check it as `predict` does (a file that is no image, is corrupt or
   over the pixel limit becomes a skipped row with its reason);
2. the model's UDF turns the photos into PNG masks;
3. each mask (and overlay, when asked) is written to the output, and the photo's row of the
   results table comes back.

Spark runs a UDF on every row of its column (it lifts Python UDFs out of conditionals), so a
skipped row carries a 1x1 placeholder photo through step 2, whose mask is dropped.
The masks are the model's own PNGs, so they are byte for byte `predict`'s.
"""

from __future__ import annotations

import base64
import itertools
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.images import ImageError, encode_png
from pipeline.locations import Location, location
from pipeline.prediction.photos import (
    COLUMNS,
    PREDICTED,
    SKIPPED,
    checked_photo,
    planned,
    predicted_row,
    skipped_row,
)
from pipeline.serving.segmenter import FLIP_TTA, INPUT_COLUMN, OUTPUT_COLUMN, RUNTIME, THRESHOLD

TABLE_NAME = "predictions"
# PySpark 4 runs on Java 17 or 21.
JAVA_MAJOR = 17
PLACEHOLDER = base64.b64encode(encode_png(np.zeros((1, 1), np.uint8))).decode("ascii")
READ_COLUMNS = ["file", "status", "reason", "width", "height", INPUT_COLUMN]
READ_SCHEMA = "file string, status string, reason string, width int, height int, image string"
# The results table's columns are predict's predictions.csv's, typed.
NUMBERS = {"width": "int", "height": "int", "foreground_fraction": "double"}
ARROW_TYPES = {"int": pa.int32(), "double": pa.float64(), "string": pa.string()}
RESULT_SCHEMA = ", ".join(f"{name} {NUMBERS.get(name, 'string')}" for name in COLUMNS)
TABLE_SCHEMA = pa.schema([(name, ARROW_TYPES[NUMBERS.get(name, "string")]) for name in COLUMNS])
TABLE_CHUNK = 1000


@dataclass(frozen=True)
class SparkJob:
    """What to mask, with what, and how the work is cut."""

    input: str
    output: str
    model_uri: str
    threshold: float
    tta: bool
    runtime: str
    overlays: bool
    spark_master: str
    env_manager: str
    partition_photos: int
    batch_photos: int
    max_pixels: int


@dataclass(frozen=True)
class SparkReport:
    tables: Path  # a temporary folder with local copies of both tables, for the run's artifacts
    counts: Counter  # photos by status
    seconds: float  # the job itself: listing, masks and table, not Spark's start
    start_seconds: float  # starting Spark (the JVM) and the model's UDF


def java_version() -> int:
    """The major version of the `java` Spark will start, or a PipelineError saying what to
    install."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home, "bin", "java")) if home else shutil.which("java")
    if not java or not Path(java).exists():
        raise PipelineError(
            f"Spark needs Java {JAVA_MAJOR} or 21 and none was found (JAVA_HOME unset, no java "
            "on PATH): install it, e.g. `apt-get install openjdk-17-jre-headless`"
        )
    shown = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    words = (shown.stderr or shown.stdout).split('"')
    major = words[1].split(".")[0] if len(words) > 1 else ""
    if not major.isdigit() or int(major) < JAVA_MAJOR:
        raise PipelineError(
            f"Spark needs Java {JAVA_MAJOR} or 21; {java} is {major or 'of an unknown version'}: "
            "install openjdk-17-jre-headless or point JAVA_HOME at a newer Java"
        )
    return int(major)


def spark_session(master: str, batch_photos: int) -> Any:
    """A Spark session for `master` (the one already running in this process, if any)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise PipelineError(
            "Spark batch prediction needs PySpark: pip install -e '.[spark]'"
        ) from None
    java_version()
    # Executors' Python is this one (in local mode they run on this machine); a cluster sets
    # PYSPARK_PYTHON itself.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master(master)
        .appName("unet-person predict")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(batch_photos))
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def read_photos(source: Location, max_pixels: int) -> Callable:
    """Step 1, for mapInPandas: each listed name read and checked."""

    def step(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows = []
            for name, refused in zip(batch["file"], batch["refused"], strict=True):
                row = dict(file=name, status=SKIPPED, reason=refused, image=PLACEHOLDER)
                if not refused:
                    try:
                        data = source.read(name)
                        width, height = checked_photo(data, max_pixels).size
                    except (ImageError, OSError) as error:
                        row["reason"] = str(error)
                    else:
                        image = base64.b64encode(data).decode("ascii")
                        row |= dict(status=PREDICTED, width=width, height=height, image=image)
                rows.append(row)
            yield pd.DataFrame(rows, columns=READ_COLUMNS)

    return step


def write_masks(target: Location, max_pixels: int, overlays: bool) -> Callable:
    """Step 3, for mapInPandas: each mask (and overlay) written, each photo's row returned."""

    def step(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows = []
            for record in batch.itertuples(index=False):
                if record.status != PREDICTED:
                    rows.append(skipped_row(record.file, record.reason))
                    continue
                photo = (
                    checked_photo(base64.b64decode(record.image), max_pixels) if overlays else None
                )
                size = (int(record.width), int(record.height))
                row, files = predicted_row(record.file, size, base64.b64decode(record.mask), photo)
                for name, content in files.items():
                    target.write(name, content)
                rows.append(row)
            yield table_frame(rows)

    return step


def table_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows of the results table with the table's types (an empty size is a missing one)."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    for column in NUMBERS:
        frame[column] = pd.to_numeric(frame[column].replace("", None))
    return frame.astype({"width": "Int32", "height": "Int32"})


def predict_with_spark(job: SparkJob) -> SparkReport:
    """The masks of every photo under job.input written under job.output, and the table."""
    import mlflow
    from pyspark.sql.functions import struct

    listing_began = time.monotonic()
    source, target = location(job.input), location(job.output)
    # The listing first: a wrong URI or an empty folder is refused before Spark starts.
    target.check_writable("output")
    plan = planned(source, target, ("input", "output"))
    listing_seconds = time.monotonic() - listing_began
    start_began = time.monotonic()
    spark = spark_session(job.spark_master, job.batch_photos)
    mask_of = mlflow.pyfunc.spark_udf(
        spark,
        job.model_uri,
        result_type="string",
        env_manager=job.env_manager,
        params={THRESHOLD: job.threshold, FLIP_TTA: job.tta},
        model_config={RUNTIME: job.runtime},
    )
    masks_began = time.monotonic()
    partitions = max(1, math.ceil(len(plan) / job.partition_photos))
    names = spark.createDataFrame(
        spark.sparkContext.parallelize(
            [(listed.name, listed.refused) for listed in plan], partitions
        ),
        "file string, refused string",
    )
    read = names.mapInPandas(read_photos(source, job.max_pixels), READ_SCHEMA)
    masked = read.withColumn(OUTPUT_COLUMN, mask_of(struct(INPUT_COLUMN)))
    if not job.overlays:  # the photos are not needed after the model
        masked = masked.drop(INPUT_COLUMN)
    results = masked.mapInPandas(write_masks(target, job.max_pixels, job.overlays), RESULT_SCHEMA)
    tables, counts = write_table(results, target)
    job_seconds = listing_seconds + time.monotonic() - masks_began
    return SparkReport(tables, counts, job_seconds, masks_began - start_began)


def write_table(results: Any, target: Location) -> tuple[Path, Counter]:
    """The results as predictions.parquet and predictions.csv beside the masks, written as the
    partitions come in (a million rows never sit in the driver at once); a temporary folder
    with local copies of both comes back for the run's artifacts, with the count of each
    status."""
    folder = Path(tempfile.mkdtemp(prefix="unet-person-spark-"))
    parquet, csv = folder / f"{TABLE_NAME}.parquet", folder / f"{TABLE_NAME}.csv"
    counts: Counter = Counter()
    rows = (row.asDict() for row in results.toLocalIterator(prefetchPartitions=True))
    with pq.ParquetWriter(parquet, TABLE_SCHEMA) as writer, csv.open("w", newline="") as text:
        while chunk := list(itertools.islice(rows, TABLE_CHUNK)):
            frame = table_frame(chunk)
            writer.write_table(pa.Table.from_pandas(frame, TABLE_SCHEMA, preserve_index=False))
            frame.to_csv(text, index=False, header=not counts)
            counts.update(frame["status"])
    for path in (parquet, csv):
        target.write(path.name, path.read_bytes())
    return folder, counts
