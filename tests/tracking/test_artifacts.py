"""A step's input given as an artifact URI is fetched once into the cache, as a finished folder."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from pipeline import folders
from pipeline.errors import PipelineError
from pipeline.orchestration.workflow import absolute_path
from pipeline.tracking.artifacts import is_artifact_uri, local_input


def logged_folder(tmp_path: Path, with_marker: bool) -> str:
    folder = tmp_path / "processed"
    folder.mkdir()
    (folder / "train_images.npy").write_bytes(b"pixels")
    if with_marker:
        folders.write_marker(folder, {"digest": "abc"})
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "processed")
    return f"runs:/{run.info.run_id}/processed"


def test_an_artifact_uri_becomes_a_local_finished_folder(tmp_path: Path) -> None:
    uri = logged_folder(tmp_path, with_marker=True)
    fetched = local_input(uri, "data_dir")
    assert folders.read_marker(fetched) == {"digest": "abc"}
    assert (fetched / "train_images.npy").read_bytes() == b"pixels"
    assert sorted(path.name for path in fetched.iterdir()) == [
        folders.MARKER_FILE,
        "train_images.npy",
    ]
    assert local_input(uri, "data_dir") == fetched  # fetched once


def test_an_unfinished_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not the output of a finished pipeline step"):
        local_input(logged_folder(tmp_path, with_marker=False), "data_dir")


ARTIFACT_URIS = [
    "runs:/0123abcd/processed",
    "models:/m-0123abcd",
    "models:/unet-person@champion",
    "mlflow-artifacts:/1/0123abcd/artifacts/processed",
    "s3://bucket/mlruns/1/0123abcd/artifacts/processed",
]


@pytest.mark.parametrize("uri", ARTIFACT_URIS)
def test_artifact_uris_are_passed_on_as_given(uri: str) -> None:
    """One definition of an artifact URI: the workflow leaves as given what steps fetch."""
    assert is_artifact_uri(uri)
    assert absolute_path(uri) == uri


def test_local_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    for location, expected in (
        ("data/processed", tmp_path / "data" / "processed"),
        ("~/data/processed", home / "data" / "processed"),
    ):
        assert not is_artifact_uri(location)
        assert absolute_path(location) == str(expected)
        assert local_input(location, "data_dir") == Path(location).expanduser()
