"""predict_spark in local[2] mode: the same masks as predict, bad files as rows, S3 on moto.

All of it in one file, so that pytest-xdist (--dist loadfile) gives it one worker and one JVM,
started once by the module's session fixture and reused by every entry point call."""

from __future__ import annotations

from pathlib import Path

import boto3
import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline.entrypoints import predict, predict_spark
from pipeline.errors import PipelineError
from pipeline.prediction.spark import java_version, spark_session
from tests.conftest import last_run
from tests.s3 import S3_CREDENTIALS, lower, moto_bucket
from tests.segmenters import blank_png, log_model, photo_file, varied_net

MODES = ("RGB", "L", "RGBA", "P", "CMYK")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 API, and its credentials in the environment before Spark starts: Spark's
    Python workers keep the environment the JVM started with, as executors do theirs."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in S3_CREDENTIALS.items():
            patch.setenv(name, value)
        yield from moto_bucket("photos")


@pytest.fixture(scope="module")
def spark(s3):
    return spark_session("local[2]", 4)


@pytest.fixture
def model_uri(spark) -> str:
    return log_model(varied_net())


def library(folder: Path) -> Path:
    """20 photos of mixed sizes, modes and formats in nested folders, and the bad files: a
    corrupt PNG, an empty file, a text file, a photo over the pixel limit."""
    for index in range(20):
        mode = MODES[index % len(MODES)]
        fmt = "JPEG" if mode == "CMYK" or (mode in ("RGB", "L") and index % 2) else "PNG"
        size = (24 + 7 * index, 60 - 2 * index)
        path = folder / f"set{index % 3}" / f"photo{index:02d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo_file(size, mode, fmt, seed=index))
    (folder / "cut.png").write_bytes(photo_file((40, 40), seed=99)[:200])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("not a photo")
    (folder / "huge.png").write_bytes(blank_png((9000, 8000)))
    return folder


def run_spark(model_uri: str, source: str, output: str, *extra: str) -> int:
    argv = ["--model_uri", model_uri, "--input", source, "--output", output]
    return predict_spark.main([*argv, "--spark_master", "local[2]", *extra])


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_spark_gives_predicts_masks_byte_for_byte_and_bad_files_as_rows(
    model_uri: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("UNET_PERSON_MAX_PIXELS", "50000000")
    photos = library(tmp_path / "photos")
    secret = tmp_path / "secret.png"
    secret.write_bytes(photo_file((30, 30), seed=7))
    (photos / "link.png").symlink_to(secret)

    assert (
        predict.main(
            ["--model_uri", model_uri, "--input_dir", str(photos), "--output_dir", "local"]
        )
        == 0
    )
    assert run_spark(model_uri, str(photos), "spark", "--overlays", "true") == 0

    local, spark = tmp_path / "local", tmp_path / "spark"
    masks = {name: data for name, data in files_under(local).items() if name.startswith("masks/")}
    assert len(masks) == 20
    spark_files = files_under(spark)
    assert {name: spark_files.get(name) for name in masks} == masks
    overlays = [name for name in files_under(local) if name.startswith("overlays/")]
    assert all(spark_files[name] == (local / name).read_bytes() for name in overlays)

    assert (spark / "predictions.csv").read_bytes() == (local / "predictions.csv").read_bytes()
    table = pd.read_csv(spark / "predictions.csv", keep_default_na=False)
    assert pd.read_parquet(spark / "predictions.parquet")["file"].tolist() == table["file"].tolist()
    reasons = table.set_index("file")["reason"]
    assert "unreadable image" in reasons["cut.png"]
    assert "not an image" in reasons["notes.txt"]
    assert "not an image" in reasons["empty.jpg"]
    assert "over the limit" in reasons["huge.png"]
    assert "UNET_PERSON_MAX_PIXELS" in reasons["huge.png"]
    assert "outside the folder" in reasons["link.png"]
    assert not any(name.startswith("masks/link") for name in spark_files)
    assert (table["status"] == "predicted").sum() == 20

    run = last_run()
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert (metrics["photos"], metrics["predicted"], metrics["skipped"]) == (25, 20, 5)
    assert metrics["photos_per_s"] > 0
    assert run.data.tags["unet_person.predicted_with"].startswith("m-")
    artifacts = {item.path for item in MlflowClient().list_artifacts(run.info.run_id)}
    assert artifacts == {"predictions.csv", "predictions.parquet"}


def test_tta_and_the_onnx_runtime_give_predicts_masks_too(spark, tmp_path: Path) -> None:
    model_uri = log_model(varied_net(3), onnx=True)
    photos = tmp_path / "photos"
    for index, mode in enumerate(("RGB", "L", "RGBA")):
        path = photos / f"photo{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo_file((50 + 9 * index, 41), mode, seed=20 + index))
    options = ["--model_uri", model_uri, "--tta", "true", "--runtime", "onnx"]

    assert predict.main([*options, "--input_dir", str(photos), "--output_dir", "local"]) == 0
    assert run_spark(model_uri, str(photos), "spark", *options[2:]) == 0

    local = {n: d for n, d in files_under(tmp_path / "local").items() if n.startswith("masks/")}
    assert len(local) == 3
    spark_files = files_under(tmp_path / "spark")
    assert {name: spark_files.get(name) for name in local} == local


def test_spark_reads_and_writes_an_s3_prefix(
    model_uri: str, s3: tuple[str, str], tmp_path: Path, monkeypatch
) -> None:
    endpoint, bucket = s3
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    photos = library(tmp_path / "photos")
    (photos / "huge.png").unlink()  # moto keeps objects in memory: no large bodies
    client = boto3.client("s3", endpoint_url=endpoint, **lower(S3_CREDENTIALS))
    for path in sorted(photos.rglob("*")):
        if path.is_file():
            key = f"library/in/{path.relative_to(photos).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())

    assert run_spark(model_uri, f"s3://{bucket}/library/in", f"s3://{bucket}/library/out") == 0
    assert run_spark(model_uri, str(photos), "local") == 0

    written = {
        item["Key"].removeprefix("library/out/"): item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="library/out/"
        )
        for item in page.get("Contents", [])
    }
    local = files_under(tmp_path / "local")
    masks = sorted(name for name in local if name.startswith("masks/"))
    assert sorted(name for name in written if name.startswith("masks/")) == masks
    for name in masks:
        assert client.get_object(Bucket=bucket, Key=written[name])["Body"].read() == local[name]
    remote_table = client.get_object(Bucket=bucket, Key=written["predictions.csv"])["Body"].read()
    assert remote_table == local["predictions.csv"]
    assert not any(name.startswith("overlays/") for name in written)


@pytest.mark.parametrize(
    ("source", "environment", "expected"),
    [
        ("s3://no-such-bucket/x", {}, "the bucket does not exist"),
        ("s3://photos/nothing-here", {}, "holds no files"),
        # moto takes any credentials; none at all is refused by boto3 itself
        ("s3://photos/x", dict.fromkeys(S3_CREDENTIALS), "no S3 credentials"),
        ("s3://photos/x", {"MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach"),
    ],
)
def test_bad_s3_inputs_are_one_line_naming_the_uri(
    model_uri: str, s3, source: str, environment: dict, expected: str, monkeypatch, capsys
) -> None:
    endpoint, bucket = s3
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    for name, value in environment.items():
        monkeypatch.delenv(name) if value is None else monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    boto3.client("s3", endpoint_url=endpoint, **lower(S3_CREDENTIALS)).put_object(
        Bucket=bucket, Key="x/a.png", Body=photo_file((8, 8))
    )

    assert run_spark(model_uri, source, "out") == 2

    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and expected in error[0] and source in error[0], error
    assert last_run().info.status == "FAILED"


def test_missing_java_is_one_line_saying_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-java"))
    with pytest.raises(PipelineError, match="openjdk-17-jre-headless"):
        java_version()
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PipelineError, match="none was found"):
        java_version()
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'openjdk version \"11.0.2\" 2019-01-15' >&2\n")
    fake.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(PipelineError, match="is 11"):
        java_version()


def test_bad_parameters_are_refused_before_any_run(capsys) -> None:
    assert predict_spark.main(["--input", "s3:///x"]) == 2
    assert "names no bucket" in capsys.readouterr().err
    assert predict_spark.main(["--input", "p", "--env_manager", "pip"]) == 2
    assert "env_manager" in capsys.readouterr().err
    assert predict_spark.main(["--input", "p", "--batch_photos", "0"]) == 2
    assert mlflow.search_runs(search_all_experiments=True).empty
