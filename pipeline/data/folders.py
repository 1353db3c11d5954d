"""Publish step outputs atomically: a folder is either absent, the old one, or complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.data import layout
from pipeline.errors import PipelineError


def check_replaceable(destination: Path, parameter: str) -> None:
    """Refuse to overwrite a folder of the user's that no step of ours wrote."""
    if (
        destination.exists()
        and layout.read_marker(destination) is None
        and any(destination.iterdir())
    ):
        raise PipelineError(
            f"{parameter} {destination} already holds files that this pipeline did not write; "
            f"choose an empty or new {parameter}, or remove that folder yourself"
        )


@contextmanager
def staging_beside(destination: Path) -> Iterator[Path]:
    """A scratch folder on the destination's filesystem, so publishing is a rename."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.staging-", dir=destination.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish(folder: Path, destination: Path) -> None:
    """Move a finished folder to `destination`; an older output is removed only after the swap."""
    retired = destination.with_name(f".{destination.name}.retired-{os.getpid()}")
    # mkdtemp makes it private; outputs are for everyone who may read the parent.
    folder.chmod(0o755)
    if destination.exists():
        destination.rename(retired)
    folder.rename(destination)
    shutil.rmtree(retired, ignore_errors=True)
