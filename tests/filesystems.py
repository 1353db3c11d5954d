"""Real filesystems of a chosen size or mode for fault tests: a tmpfs mounted on a folder."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs at `folder` (made if need be) with mount `options` (`size=8m`, `ro,size=1m`),
    unmounted afterwards. Mounting needs root, which CI has; elsewhere the test is skipped."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem of its own needs root (CI runs as root)")
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
