"""Files written whole or not at all, and a full disk reported as what to do, not a traceback.

A file replaced by `os.replace` is either the old one or the new one, never half of each, but
only if the new bytes are on the disk before the rename, and the rename itself before anyone
counts on it: hence the two `fsync`s. The temporary file lies in the target's own folder, so the
rename never becomes a copy across filesystems (which a full disk or a kill cuts short).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import PipelineError

OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_out_of_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in OUT_OF_SPACE


def free_bytes(folder: Path) -> int:
    """Free space for this user on the filesystem of `folder` (or of its nearest parent)."""
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except FileNotFoundError:
            continue
    return 0


def size_text(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def out_of_space(folder: Path, what: str, needed: int | None, advice: str) -> PipelineError:
    """The one line a step ends with when `folder`'s disk is full: where, how much, what to do."""
    need = f"it needed {size_text(needed)}" if needed else "it needed more"
    return PipelineError(
        f"no space left on the disk of {folder} to write {what}: {need} and had "
        f"{size_text(free_bytes(folder))} free. What was finished before is kept whole; {advice}, "
        "then run the same command again"
    )


def out_of_space_from(error: OSError) -> PipelineError:
    """`out_of_space` for a full disk met where no step named what it was writing."""
    written = Path(error.filename) if error.filename else None
    folder = written.parent if written else Path.cwd()
    what = written.name if written else "its output"
    return out_of_space(folder, what, None, "free space there")


@contextmanager
def space_for(folder: Path, what: str, needed: int | None, advice: str) -> Iterator[None]:
    """Turn a full disk inside the body into `out_of_space`'s one line."""
    try:
        yield
    except OSError as error:
        if not is_out_of_space(error):
            raise
        raise out_of_space(folder, what, needed, advice) from error


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` last: without this a power cut may bring back the old name."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_whole(path: Path, data: bytes | memoryview, what: str, advice: str) -> None:
    """Replace `path` by `data` atomically and durably; on a full disk the old file stays, the
    temporary one is removed, and the error says so (`out_of_space`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with space_for(path.parent, what, len(data), advice), os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o644)  # mkstemp's 0600 would hide it from the group
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
