"""Step inputs given as MLflow artifact URIs, so a step can run on another machine than the last."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from pipeline import folders
from pipeline.errors import PipelineError

URI_PREFIXES = ("runs:/", "models:/", "mlflow-artifacts:/")


def cache_root() -> Path:
    """Downloads land under UNET_PERSON_CACHE (default ~/.cache/unet-person)."""
    return Path(os.environ.get("UNET_PERSON_CACHE", Path.home() / ".cache" / "unet-person"))


def is_artifact_uri(location: str) -> bool:
    """Whether `location` names MLflow artifacts (runs:/, models:/, mlflow-artifacts:/, or any
    scheme://, e.g. s3://) rather than a local path; the one test of it in the pipeline."""
    return location.startswith(URI_PREFIXES) or "://" in location


def local_input(location: str, parameter: str) -> Path:
    """A local folder for `location`: the path itself, or its artifacts downloaded once."""
    if not is_artifact_uri(location):
        return Path(location).expanduser()
    target = cache_root() / "artifacts" / hashlib.sha256(location.encode()).hexdigest()[:24]
    if folders.read_marker(target) is not None:
        return target
    with folders.staging_beside(target) as staging:
        fetched = staging / "fetched"  # apart from the staging folder's own lock file
        fetched.mkdir()
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(fetched))
        except (MlflowException, OSError) as error:
            raise PipelineError(
                f"cannot fetch {parameter}={location} ({error}); check the run id and path in "
                "the MLflow UI, or pass a local folder"
            ) from error
        downloaded = list(fetched.iterdir())
        root = downloaded[0] if len(downloaded) == 1 and downloaded[0].is_dir() else fetched
        if folders.read_marker(root) is None:
            raise PipelineError(
                f"{parameter}={location} is not the output of a finished pipeline step "
                f"(no {folders.MARKER_FILE} in it)"
            )
        folders.publish(root, target)
    return target
