"""Land the person dataset at a folder, from whichever source the user has.

Every source ends the same way: the folder that holds df.csv becomes `output_dir`, however deep
the archive nested it, and a marker records the source and a content digest. The marker is
written last, so a download killed half-way leaves no folder that looks finished.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipeline import disk, folders
from pipeline.console import progress
from pipeline.data import layout
from pipeline.errors import PipelineError

FREE_SPACE_ADVICE = "free space there, or give --output_dir (main: --raw_dir) on another disk"
KAGGLE_HANDLE = re.compile(r"^[\w.-]+/[\w.-]+(/versions/\d+)?$")
SYNTHETIC = re.compile(r"^synthetic(?::(\d+))?$")
DEFAULT_SYNTHETIC_COUNT = 200
SOURCE_HELP = (
    "a Kaggle handle (owner/dataset[/versions/N]), a local folder, a local .zip, "
    "an http(s) URL of a zip, or synthetic[:N]"
)


@dataclass(frozen=True)
class Landed:
    """What the download step reports about the dataset it landed."""

    path: Path
    source: str
    kind: str
    rows: int
    usable_rows: int
    problems: list[tuple[int, str]]
    digest: str
    reused: bool


def source_kind(source: str) -> str:
    """Classify `source`; local paths win over handles so a folder named a/b is a folder."""
    if match := SYNTHETIC.match(source):
        if match.group(1) and int(match.group(1)) < 1:
            raise PipelineError(f"source {source}: the synthetic count must be at least 1")
        return "synthetic"
    if source.startswith(("http://", "https://")):
        return "url"
    path = Path(source).expanduser()
    if path.is_dir():
        return "folder"
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise PipelineError(
                f"source {source} is a file but not a zip archive: pass {SOURCE_HELP}"
            )
        return "zip"
    if looks_local(source):
        raise PipelineError(
            f"source {source}: there is no folder or file {path.absolute()}; give an existing "
            f"folder or .zip (a Kaggle handle is owner/dataset and names no local folder)"
        )
    if KAGGLE_HANDLE.match(source):
        return "kaggle"
    raise PipelineError(f"source {source!r} is none of: {SOURCE_HELP}")


def looks_local(source: str) -> bool:
    """A path, not a Kaggle handle: it starts with `.`, `/` or `~`, or its first part is a
    folder here (data/raw_typo). Such a source that does not exist is a typo to name at once,
    not a dataset to ask Kaggle for."""
    first = Path(source).parts[0] if Path(source).parts else ""
    return source.startswith((".", "/", "~")) or Path(first).is_dir()


def source_fingerprint(source: str) -> str:
    """Identify a source's content cheaply: local files by name, size and mtime, generated data
    by its count and generator version, others by name.

    This is what decides that "the same source twice" needs no second download. A symlink
    counts by itself (lstat), never by its target, which may be outside the source.
    """
    kind = source_kind(source)
    digest = hashlib.sha256(f"{kind}:{source}".encode())
    if kind == "synthetic":
        from pipeline.data.synthetic import GENERATOR_VERSION

        digest.update(f"generator {GENERATOR_VERSION}".encode())
    if kind in ("folder", "zip"):
        root = Path(source).expanduser()
        files = sorted(root.rglob("*")) if kind == "folder" else [root]
        for path in files:
            status = path.lstat() if kind == "folder" else path.stat()
            if stat.S_ISREG(status.st_mode) or stat.S_ISLNK(status.st_mode):
                digest.update(
                    f"{path.relative_to(root)}:{status.st_size}:{status.st_mtime_ns}".encode()
                )
    return digest.hexdigest()[:32]


def land_dataset(source: str, output_dir: Path, cache_dir: Path) -> Landed:
    """Put the dataset named by `source` at `output_dir`, doing the work only when needed."""
    kind = source_kind(source)
    fingerprint = source_fingerprint(source)
    output_dir = output_dir.expanduser().resolve()
    folders.check_replaceable(output_dir, "output_dir")
    previous = folders.read_marker(output_dir)
    landed_index = output_dir / layout.INDEX_FILE
    if previous and previous.get("source_fingerprint") == fingerprint and landed_index.is_file():
        pairs, unusable = layout.read_pairs(landed_index)
        landed = _inspect(landed_index, pairs, unusable, source, kind, reused=True)
        if landed.digest == previous.get("digest"):
            return landed

    with folders.staging_beside(output_dir) as staging:
        with disk.space_for(
            output_dir.parent, f"the dataset from {source}", None, FREE_SPACE_ADVICE
        ):
            index = _fetch(source, kind, staging, cache_dir)
        shown_as = f"{layout.INDEX_FILE} of {source}"  # not its path: that may be in staging
        pairs, unusable = layout.read_pairs(index, shown_as)
        landed = _inspect(index, pairs, unusable, source, kind, reused=False)
        if landed.rows == 0:
            raise PipelineError(
                f"{shown_as} lists no rows: pass the person dataset (its df.csv lists an image "
                "and a mask per row)"
            )
        if landed.usable_rows == 0:
            raise PipelineError(
                f"source {source}: none of the {landed.rows} rows of df.csv has both its image "
                f"and mask file; first problem: {landed.problems[0][1]}"
            )
        needed = sum(
            path.stat().st_size for pair in pairs for _, path in pair.files if path.is_file()
        )
        with disk.space_for(output_dir.parent, "the dataset", needed, FREE_SPACE_ADVICE):
            dataset_root = _land_listed(index, pairs, staging / "dataset")
        folders.write_marker(
            dataset_root,
            {"source": source, "source_fingerprint": fingerprint, "digest": landed.digest},
        )
        folders.publish(dataset_root, output_dir)
    return Landed(**{**landed.__dict__, "path": output_dir})


def _inspect(
    index: Path,
    pairs: list[layout.Pair],
    unusable: list[tuple[int, str]],
    source: str,
    kind: str,
    reused: bool,
) -> Landed:
    """What df.csv at `index` lists and which of its files are there; names are relative."""
    problems = sorted(unusable + layout.missing_files(pairs))
    return Landed(
        path=index.parent,
        source=source,
        kind=kind,
        rows=len(pairs) + len(unusable),
        usable_rows=len(pairs) + len(unusable) - len(problems),
        problems=problems,
        digest=layout.content_digest(index, pairs),
        reused=reused,
    )


def _fetch(source: str, kind: str, staging: Path, cache_dir: Path) -> Path:
    """Make the source's files readable locally (in `staging` if need be); returns its df.csv."""
    if kind == "synthetic":
        # The generator (700 lines and its drawing code) only for a source that asks for it.
        from pipeline.data.synthetic import generate_dataset

        match = SYNTHETIC.match(source)
        count = int(match.group(1)) if match and match.group(1) else DEFAULT_SYNTHETIC_COUNT
        return generate_dataset(staging / "generated", count=count, seed=0)
    if kind == "folder":
        return layout.find_index(Path(source).expanduser())
    if kind == "kaggle":
        return layout.find_index(_kaggle_download(source))
    archive = Path(source).expanduser() if kind == "zip" else _http_download(source, cache_dir)
    try:
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(staging / "extracted")  # drops '..' and '/'; makes no symlinks
    except (zipfile.BadZipFile, OSError) as error:
        raise PipelineError(f"cannot extract {archive} ({error}): download it again") from error
    try:
        return layout.find_index(staging / "extracted")
    except PipelineError as error:  # it would name the staging folder, which is gone by then
        raise PipelineError(
            f"the archive from {source} holds no {layout.INDEX_FILE}: pass the zip of the person "
            "dataset (df.csv, images/ and masks/)"
        ) from error


def _land_listed(index: Path, pairs: list[layout.Pair], destination: Path) -> Path:
    """Land df.csv and the files its usable rows name, and nothing else of the source folder.

    Whatever else sits beside the dataset (notes, a symlink to somebody's secrets) stays out
    of the landed folder and so out of the run's artifacts. Files land as hard links or
    copies of what the paths resolve to, never as symlinks.
    """
    destination.mkdir()
    _link_or_copy(index.resolve(), destination / layout.INDEX_FILE)
    for pair in pairs:
        for name, path in pair.files:
            target = destination / name
            if path.is_file() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(path.resolve(), target)
    return destination


def _link_or_copy(source: Path, destination: Path) -> None:
    """Hard-link where the filesystem allows, since datasets are large and never edited in place."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _kaggle_download(handle: str) -> Path:
    import kagglehub

    try:
        return Path(kagglehub.dataset_download(handle))
    except Exception as error:  # kagglehub raises many types, all mean "could not get it"
        raise PipelineError(
            f"Kaggle download of {handle} failed ({type(error).__name__}: {error}). "
            "Check the network and the handle, or download the archive yourself and pass its "
            "path as source"
        ) from error


def _http_download(url: str, cache_dir: Path) -> Path:
    """Fetch a zip once into the cache, with a progress bar; a killed fetch leaves only a .part."""
    import requests

    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".zip")
    if target.is_file():
        return target
    partial = target.with_suffix(".part")
    try:
        with requests.get(url, stream=True, timeout=30) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length", 0)) or None
            with (
                partial.open("wb") as sink,
                progress(total=total, unit="B", unit_scale=True, desc=f"download {url}") as bar,
            ):
                for block in response.iter_content(chunk_size=1 << 20):
                    sink.write(block)
                    bar.update(len(block))
    except requests.RequestException as error:
        partial.unlink(missing_ok=True)
        raise PipelineError(
            f"could not download {url} ({error}); check the address, or fetch the zip yourself "
            "and pass its path as source"
        ) from error
    if not zipfile.is_zipfile(partial):  # e.g. a login page: caching it would fail every retry
        partial.unlink()
        raise PipelineError(
            f"{url} did not return a zip archive; check the address, or fetch the zip yourself "
            "and pass its path as source"
        )
    partial.replace(target)
    return target
