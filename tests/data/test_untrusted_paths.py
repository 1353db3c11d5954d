"""A dataset folder is untrusted: whatever df.csv or a symlink names, no file outside it is read.

Every path df.csv names must stay inside the folder that holds df.csv: no absolute paths, no
`..` escapes, no symlinks (to a file or a folder) that lead out. Such rows are bad rows with
a reason, and the outside files never reach the landed dataset, the cache or the run's artifacts.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data_helpers import (
    edit_row,
    every_byte_string,
    fetched_artifacts,
    leftovers,
    make_dataset,
    secret_picture,
)
from PIL import Image

from pipeline import folders
from pipeline.data import layout
from pipeline.data.cache import SPLITS, split_paths
from pipeline.data.download import land_dataset, source_fingerprint
from pipeline.data.preprocess import preprocess
from pipeline.entrypoints import download as download_entry_point
from pipeline.entrypoints import preprocess as preprocess_entry_point
from pipeline.errors import PipelineError
from pipeline.images import square_pixels
from tests.conftest import last_run

SIZE = 32
SECRET_TEXT = b"root:hunter2:do-not-upload"
ESCAPES = "escapes the dataset folder"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the dataset with a private picture and a private text file."""
    secrets = tmp_path / "secret"
    secret_picture(secrets)
    (secrets / "passwords.txt").write_bytes(SECRET_TEXT)
    return secrets


def _hostile_dataset(root: Path, outside: Path) -> Path:
    """A 10-row dataset whose folder leads out four ways; returns its df.csv.

    Row 2 names an absolute path, row 3 a `..` path, row 5's image is a symlink out, row 7's
    mask sits in a symlinked folder that leads out; and a stray `stolen.txt` links out too.
    """
    index = make_dataset(root, 10)
    edit_row(index, 2, images=str(outside / "private.png"))
    edit_row(index, 3, images="../secret/private.png")
    (root / "images" / "p005.png").unlink()
    (root / "images" / "p005.png").symlink_to(outside / "private.png")
    (root / "elsewhere").symlink_to(outside, target_is_directory=True)
    edit_row(index, 7, masks="elsewhere/private.png")
    (root / "stolen.txt").symlink_to(outside / "passwords.txt")
    return index


def _cache_images(out: Path) -> list[np.ndarray]:
    return [image for split in SPLITS for image in np.load(split_paths(out, split)[0])]


def _secret_pixels(outside: Path) -> np.ndarray:
    with Image.open(outside / "private.png") as picture:
        return square_pixels(picture, SIZE)


def _assert_no_secret(folder: Path, outside: Path) -> None:
    secret_png = (outside / "private.png").read_bytes()
    for content in every_byte_string(folder):
        assert SECRET_TEXT not in content
        assert content != secret_png
    assert not [path for path in folder.rglob("*") if path.is_symlink()]
    assert not list(folder.rglob("stolen.txt"))


# --- the rule, where df.csv is read -----------------------------------------------------------


def test_rows_leading_out_are_bad_rows_with_a_reason(tmp_path: Path, outside: Path) -> None:
    index = _hostile_dataset(tmp_path / "raw", outside)
    pairs, unusable = layout.read_pairs(index)
    reasons = dict(unusable)
    assert sorted(reasons) == [2, 3, 5, 7]
    assert all(ESCAPES in reason for reason in reasons.values())
    assert "absolute" in reasons[2]
    assert "../secret/private.png" in reasons[3] and "'..'" in reasons[3]
    assert "images/p005.png" in reasons[5] and "symlink" in reasons[5]
    assert "elsewhere/private.png" in reasons[7] and "symlink" in reasons[7]
    assert str(outside) not in reasons[5] + reasons[7]  # where a link points is nobody's business
    assert [pair.row for pair in pairs] == [0, 1, 4, 6, 8, 9]
    assert all(pair.image.parent == index.parent / "images" for pair in pairs)


def test_links_and_dotdots_that_stay_inside_are_fine(tmp_path: Path) -> None:
    index = make_dataset(tmp_path / "raw", 4)
    root = index.parent
    (root / "images" / "p001.png").rename(root / "shared.png")
    (root / "images" / "p001.png").symlink_to(root / "shared.png")
    (root / "pictures").symlink_to(root / "images", target_is_directory=True)
    edit_row(index, 2, images="pictures/p002.png")
    edit_row(index, 3, images="./images//p003.png")
    pairs, unusable = layout.read_pairs(index)
    assert unusable == []
    assert [pair.image_name for pair in pairs] == [
        "images/p000.png",
        "images/p001.png",
        "pictures/p002.png",
        "images/p003.png",
    ]


def test_a_dotdot_that_comes_back_in_is_still_refused(tmp_path: Path) -> None:
    """`images/../images/a.png` stays inside, but `..` after a symlink means something else to
    the kernel than to the text: one rule, no `..` at all, is the one that cannot be fooled."""
    index = make_dataset(tmp_path / "raw", 3)
    edit_row(index, 1, masks="masks/../masks/p001.png")
    _, unusable = layout.read_pairs(index)
    assert [row for row, _ in unusable] == [1]
    assert ESCAPES in unusable[0][1]


def test_a_df_csv_that_links_out_is_refused(tmp_path: Path, outside: Path) -> None:
    elsewhere = make_dataset(outside / "other", 3)
    root = tmp_path / "raw"
    root.mkdir()
    (root / "df.csv").symlink_to(elsewhere)
    with pytest.raises(PipelineError, match=r"df\.csv") as caught:
        layout.read_pairs(root / "df.csv")
    assert "outside" in str(caught.value) and str(root) in str(caught.value)
    with pytest.raises(PipelineError, match="outside"):
        land_dataset(str(root), tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


# --- download ---------------------------------------------------------------------------------


def test_download_lands_no_outside_file_and_logs_none(tmp_path: Path, outside: Path) -> None:
    index = _hostile_dataset(tmp_path / "raw", outside)
    out = tmp_path / "landed"
    assert download_entry_point.main(["--source", str(index.parent), "--output_dir", str(out)]) == 0

    _assert_no_secret(out, outside)
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [folders.MARKER_FILE, "df.csv", "images", "masks"]
    )
    assert (out / "df.csv").read_bytes() == index.read_bytes()
    run = last_run()
    assert run.data.metrics["rows"] == 10 and run.data.metrics["usable_rows"] == 6
    artifacts = fetched_artifacts(run.info.run_id, tmp_path / "fetched")
    _assert_no_secret(artifacts, outside)
    assert (artifacts / "dataset" / "images" / "p000.png").is_file()
    problems = pd.read_csv(artifacts / "problems.csv")
    assert problems["row"].tolist() == [2, 3, 5, 7]
    assert problems["reason"].str.contains(ESCAPES).all()


def test_an_absolute_path_in_df_csv_is_a_bad_row_not_a_crash(tmp_path: Path, outside: Path) -> None:
    index = make_dataset(tmp_path / "raw", 5)
    edit_row(index, 1, masks=str(outside / "private.png"))
    landed = land_dataset(str(index.parent), tmp_path / "out", tmp_path / "cache")
    assert (landed.rows, landed.usable_rows) == (5, 4)
    assert [row for row, _ in landed.problems] == [1]
    assert "absolute" in landed.problems[0][1]


def test_only_df_csv_and_the_files_it_lists_are_landed(tmp_path: Path) -> None:
    index = make_dataset(tmp_path / "raw", 4)
    root = index.parent
    (root / "notes.txt").write_text("private notes beside the dataset")
    (root / "images" / "unlisted.png").write_bytes((root / "images" / "p000.png").read_bytes())
    land_dataset(str(root), tmp_path / "out", tmp_path / "cache")
    landed = {
        path.relative_to(tmp_path / "out").as_posix()
        for path in (tmp_path / "out").rglob("*")
        if path.is_file()
    }
    listed = {f"{kind}/p{row:03d}.png" for kind in ("images", "masks") for row in range(4)}
    assert landed == {"df.csv", folders.MARKER_FILE, *listed}


def test_the_fingerprint_does_not_look_outside(tmp_path: Path, outside: Path) -> None:
    index = _hostile_dataset(tmp_path / "raw", outside)
    before = source_fingerprint(str(index.parent))
    (outside / "passwords.txt").write_bytes(SECRET_TEXT * 3)  # another size and mtime
    stamp = (outside / "private.png").stat()
    os.utime(outside / "private.png", ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    assert source_fingerprint(str(index.parent)) == before


def _write_member(bundle: zipfile.ZipFile, name: str, data: bytes, mode: int = 0o644) -> None:
    member = zipfile.ZipInfo(name)
    member.external_attr = mode << 16
    bundle.writestr(member, data)


def test_zip_members_cannot_escape_or_link_out(tmp_path: Path, outside: Path) -> None:
    """Python's zipfile drops `..` and leading `/` from member names and writes a symlink
    member as a plain file holding the link's text: checked here, not assumed."""
    index = make_dataset(tmp_path / "raw", 4)
    absolute_target = tmp_path / "absolute-evil.txt"
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(index.parent.rglob("*")):
            if path.is_file() and path.name != "p001.png":
                bundle.write(path, "person/" + path.relative_to(index.parent).as_posix())
        _write_member(bundle, "person/../../../../evil.txt", b"evil")
        _write_member(bundle, str(absolute_target), b"evil")
        link_mode = stat.S_IFLNK | 0o777
        _write_member(
            bundle, "person/images/p001.png", str(outside / "private.png").encode(), link_mode
        )
        _write_member(
            bundle, "person/masks/p001.png", str(outside / "passwords.txt").encode(), link_mode
        )
    work = tmp_path / "work" / "deep"
    work.mkdir(parents=True)
    before = set(tmp_path.rglob("*"))
    landed = land_dataset(str(archive), work / "out", tmp_path / "cache")
    created = set(tmp_path.rglob("*")) - before
    assert created and all(path.is_relative_to(work / "out") for path in created), created
    assert not absolute_target.exists()
    assert not [path for path in created if path.is_symlink()]
    _assert_no_secret(work / "out", outside)
    assert (work / "out" / "images" / "p001.png").read_bytes() == str(
        outside / "private.png"
    ).encode()
    assert landed.rows == 4


# --- preprocess -------------------------------------------------------------------------------


def test_preprocess_reads_no_outside_picture(tmp_path: Path, outside: Path) -> None:
    """preprocess may be given a raw_dir straight away, without download: the same rule holds."""
    index = _hostile_dataset(tmp_path / "raw", outside)
    out = tmp_path / "processed"
    argv = ["--raw_dir", str(index.parent), "--output_dir", str(out), "--image_size", str(SIZE)]
    assert preprocess_entry_point.main([*argv, "--val_fraction", "0.2", "--num_workers", "1"]) == 0

    secret = _secret_pixels(outside)
    assert not any(np.array_equal(image, secret) for image in _cache_images(out))
    run = last_run()
    artifacts = fetched_artifacts(run.info.run_id, tmp_path / "fetched")
    bad_rows = pd.read_csv(artifacts / "bad_rows.csv")
    assert bad_rows["row"].tolist() == [2, 3, 5, 7]
    assert bad_rows["reason"].str.contains(ESCAPES).all()
    logged = [
        image
        for split in SPLITS
        for image in np.load(artifacts / "processed" / split_paths(Path(), split)[0])
    ]
    assert len(logged) == 6
    assert not any(np.array_equal(image, secret) for image in logged)


def test_a_dotdot_row_does_not_reach_the_cache(tmp_path: Path, outside: Path) -> None:
    index = make_dataset(tmp_path / "data" / "raw", 10)
    edit_row(index, 5, images="../../secret/private.png")
    out = tmp_path / "out"
    report = preprocess(index.parent, out, SIZE, 0.2, 0.1, seed=0, num_workers=1)
    assert [(row, reason) for row, _, _, reason in report.bad_rows] == [
        (5, "image path '../../secret/private.png' escapes the dataset folder (a '..' part)")
    ]
    secret = _secret_pixels(outside)
    assert not any(np.array_equal(image, secret) for image in _cache_images(out))


def test_a_symlink_loop_is_a_bad_row(tmp_path: Path) -> None:
    index = make_dataset(tmp_path / "raw", 3)
    loop = index.parent / "images" / "p001.png"
    loop.unlink()
    loop.symlink_to(loop)
    pairs, unusable = layout.read_pairs(index)
    assert [pair.row for pair in pairs] == [0, 2]
    assert [row for row, _ in unusable] == [1]
    assert unusable[0][1].startswith("image path 'images/p001.png' cannot be followed")
