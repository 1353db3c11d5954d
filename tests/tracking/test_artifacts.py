"""A step's input given as an artifact URI is fetched once into the cache, as a finished folder."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from pipeline.data import layout
from pipeline.errors import PipelineError
from pipeline.tracking.artifacts import local_input


def logged_folder(tmp_path: Path, with_marker: bool) -> str:
    folder = tmp_path / "processed"
    folder.mkdir()
    (folder / "train_images.npy").write_bytes(b"pixels")
    if with_marker:
        layout.write_marker(folder, {"digest": "abc"})
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(folder), "processed")
    return f"runs:/{run.info.run_id}/processed"


def test_an_artifact_uri_becomes_a_local_finished_folder(tmp_path: Path) -> None:
    uri = logged_folder(tmp_path, with_marker=True)
    fetched = local_input(uri, "data_dir")
    assert layout.read_marker(fetched) == {"digest": "abc"}
    assert (fetched / "train_images.npy").read_bytes() == b"pixels"
    assert sorted(path.name for path in fetched.iterdir()) == [
        layout.MARKER_FILE,
        "train_images.npy",
    ]
    assert local_input(uri, "data_dir") == fetched  # fetched once


def test_an_unfinished_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not the output of a finished pipeline step"):
        local_input(logged_folder(tmp_path, with_marker=False), "data_dir")
