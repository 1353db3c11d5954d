"""A full disk met anywhere in a step is one line and exit 2, and its run says so (issue 28)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pipeline import disk
from pipeline.entrypoints.runner import run_entry_point
from pipeline.params import DownloadParams
from pipeline.tracking.tags import ERROR_TAG
from tests.conftest import last_run


def test_a_full_disk_no_step_foresaw_ends_the_step_in_one_line_and_fails_its_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = tmp_path / "figures" / "worst.png"

    def body(params: DownloadParams) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(written))

    assert run_entry_point("download", DownloadParams, body, ["--source", "synthetic:2"]) == 2
    errors = capsys.readouterr().err
    assert "Traceback" not in errors
    (line,) = [text for text in errors.splitlines() if text.startswith("download: error:")]
    assert line.startswith(
        f"download: error: no space left on the disk of {written.parent} to write worst.png:"
    )
    run = last_run()
    assert run.info.status == "FAILED"
    assert run.data.tags[ERROR_TAG] == line.removeprefix("download: error: ")


def test_other_os_errors_are_not_taken_for_a_full_disk() -> None:
    assert disk.is_out_of_space(OSError(errno.EDQUOT, "quota"))
    assert not disk.is_out_of_space(OSError(errno.EACCES, "denied"))
    assert not disk.is_out_of_space(ValueError("no"))


@pytest.mark.parametrize(
    ("count", "text"),
    [(512, "512 bytes"), (6000, "6.0 KB"), (3_300_000, "3.3 MB"), (2e12, "2000.0 GB")],
)
def test_sizes_read_as_people_write_them(count: float, text: str) -> None:
    assert disk.size_text(count) == text
