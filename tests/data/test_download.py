"""The download step lands every kind of source as a folder with df.csv at its top."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from data_helpers import LocalServer, file_state, leftovers, make_dataset, zip_folder

from pipeline import folders
from pipeline.data import download, synthetic
from pipeline.data.download import land_dataset, source_fingerprint, source_kind
from pipeline.errors import PipelineError

NESTED = "supervisely_person_clean_2667_img/supervisely_person_clean_2667_img/"


def _listed_files(root: Path) -> list[Path]:
    frame = pd.read_csv(root / "df.csv", index_col=0)
    return [root / rel for rel in [*frame["images"], *frame["masks"]]]


def _user_folder(path: Path) -> dict[str, tuple[bytes, int]]:
    """A folder of the user's that no step wrote; returns its state."""
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my thesis draft")
    (path / "photos").mkdir()
    (path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return file_state(path)


# --- classifying sources ---------------------------------------------------------------------


def test_source_kind_recognises_every_accepted_form(dataset: Path, tmp_path: Path) -> None:
    archive = zip_folder(dataset.parent, tmp_path / "person.zip")
    assert source_kind("synthetic") == "synthetic"
    assert source_kind("synthetic:12") == "synthetic"
    assert source_kind("http://example.com/person.zip") == "url"
    assert source_kind("https://example.com/person.zip") == "url"
    assert source_kind(str(dataset.parent)) == "folder"
    assert source_kind(str(archive)) == "zip"
    assert source_kind("tapakah68/supervisely-filtered-segmentation-person-dataset") == "kaggle"
    assert source_kind("owner/dataset/versions/3") == "kaggle"


@pytest.mark.parametrize(
    "source", ["./my_photos", "../photos", "data/raw_typo", "~/no_such_photos_folder", "/no/such"]
)
def test_a_missing_path_is_refused_at_the_door_not_asked_of_kaggle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """`main --source ./my_photos` went to Kaggle and failed 6 s later with a ConnectionError
    and a failed run; now parsing refuses it, naming the path, before any run."""
    from pipeline.params import parse
    from pipeline.training_params import MainParams

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    missing = str(Path(source).expanduser().absolute())
    with pytest.raises(PipelineError, match="there is no folder or file") as caught:
        source_kind(source)
    assert missing in str(caught.value)
    with pytest.raises(PipelineError, match="there is no folder or file"):
        parse(MainParams, ["--source", source])
    assert source_kind("owner/dataset") == "kaggle"  # no folder `owner` here: a handle


def test_a_file_that_is_not_a_zip_is_refused_by_name(tmp_path: Path) -> None:
    fake = tmp_path / "person.zip"
    fake.write_bytes(b"this is a text file, not an archive")
    with pytest.raises(PipelineError, match="not a zip archive") as caught:
        land_dataset(str(fake), tmp_path / "out", tmp_path / "cache")
    assert str(fake) in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("source", ["not a source at all", "ftp://host/person.zip", "a/b/c/d"])
def test_a_string_of_no_accepted_form_is_refused(tmp_path: Path, source: str) -> None:
    with pytest.raises(PipelineError, match="is none of") as caught:
        land_dataset(source, tmp_path / "out", tmp_path / "cache")
    assert repr(source) in str(caught.value)
    assert "Kaggle handle" in str(caught.value)
    assert not (tmp_path / "out").exists()


# --- synthetic --------------------------------------------------------------------------------


def test_synthetic_lands_n_rows_with_marker_and_a_stable_digest(tmp_path: Path) -> None:
    first = land_dataset("synthetic:3", tmp_path / "one", tmp_path / "cache")
    second = land_dataset("synthetic:3", tmp_path / "two", tmp_path / "cache")
    assert first.path == (tmp_path / "one").resolve()
    assert (first.kind, first.rows, first.usable_rows, first.problems) == ("synthetic", 3, 3, [])
    assert first.reused is False
    assert len(pd.read_csv(tmp_path / "one" / "df.csv", index_col=0)) == 3
    assert all(path.is_file() for path in _listed_files(tmp_path / "one"))
    marker = folders.read_marker(tmp_path / "one")
    assert marker == {
        "source": "synthetic:3",
        "source_fingerprint": source_fingerprint("synthetic:3"),
        "digest": first.digest,
    }
    assert second.digest == first.digest
    assert (
        land_dataset("synthetic:4", tmp_path / "three", tmp_path / "cache").digest != first.digest
    )


def test_synthetic_count_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match=r"synthetic:0: .* at least 1"):
        land_dataset("synthetic:0", tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


# --- local folder and zip ---------------------------------------------------------------------


def test_local_folder_lands_with_df_csv_at_output_dir(dataset: Path, tmp_path: Path) -> None:
    landed = land_dataset(str(dataset.parent), tmp_path / "out", tmp_path / "cache")
    out = tmp_path / "out"
    assert (landed.kind, landed.rows, landed.usable_rows, landed.reused) == (
        "folder",
        20,
        20,
        False,
    )
    assert (out / "df.csv").read_bytes() == dataset.read_bytes()
    for path in _listed_files(out):
        assert path.read_bytes() == (dataset.parent / path.relative_to(out)).read_bytes()
    assert folders.read_marker(out)["digest"] == landed.digest
    assert leftovers(tmp_path) == []


def test_local_zip_nested_two_deep_lands_flat(dataset: Path, tmp_path: Path) -> None:
    archive = zip_folder(dataset.parent, tmp_path / "person.zip", prefix=NESTED)
    landed = land_dataset(str(archive), tmp_path / "out", tmp_path / "cache")
    out = tmp_path / "out"
    assert (landed.kind, landed.rows, landed.usable_rows) == ("zip", 20, 20)
    assert sorted(p.name for p in out.iterdir()) == [
        folders.MARKER_FILE,
        "df.csv",
        "images",
        "masks",
    ]
    assert (out / "df.csv").read_bytes() == dataset.read_bytes()
    assert all(path.is_file() for path in _listed_files(out))
    assert leftovers(tmp_path) == []


def test_a_zip_without_df_csv_is_refused_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(b"png")
    archive = zip_folder(folder, tmp_path / "photos.zip")
    with pytest.raises(PipelineError, match=r"holds no df\.csv") as caught:
        land_dataset(str(archive), tmp_path / "out", tmp_path / "cache")
    assert str(archive) in str(caught.value)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_output_dir_with_user_files_is_refused_and_left_alone(
    dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mine"
    before = _user_folder(out)
    with pytest.raises(PipelineError, match="did not write") as caught:
        land_dataset(str(dataset.parent), out, tmp_path / "cache")
    assert "output_dir" in str(caught.value)
    assert str(out) in str(caught.value)
    assert file_state(out) == before
    assert leftovers(tmp_path) == []


def test_an_empty_output_dir_is_used(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    landed = land_dataset(str(dataset.parent), tmp_path / "out", tmp_path / "cache")
    assert landed.usable_rows == 20
    assert (tmp_path / "out" / "df.csv").is_file()


# --- reuse ------------------------------------------------------------------------------------


def test_the_same_source_twice_is_reused_without_rewriting(dataset: Path, tmp_path: Path) -> None:
    archive = zip_folder(dataset.parent, tmp_path / "person.zip", prefix=NESTED)
    out = tmp_path / "out"
    first = land_dataset(str(archive), out, tmp_path / "cache")
    before = file_state(out)
    folder_inode = out.stat().st_ino
    second = land_dataset(str(archive), out, tmp_path / "cache")
    assert first.reused is False
    assert second.reused is True
    assert second.digest == first.digest
    assert (second.rows, second.usable_rows, second.path) == (20, 20, out.resolve())
    assert file_state(out) == before  # same bytes and mtimes: df.csv and marker not rewritten
    assert out.stat().st_ino == folder_inode  # not swapped for a fresh copy either


def test_a_changed_local_folder_is_landed_again(dataset: Path, tmp_path: Path) -> None:
    source, out = dataset.parent, tmp_path / "out"
    first = land_dataset(str(source), out, tmp_path / "cache")
    assert land_dataset(str(source), out, tmp_path / "cache").reused is True

    touched = source / "images" / "p004.png"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    after_touch = land_dataset(str(source), out, tmp_path / "cache")
    assert after_touch.reused is False
    assert after_touch.digest == first.digest  # same bytes, landed afresh

    replacement = source / "masks" / "p007.png.new"
    replacement.write_bytes((source / "masks" / "p008.png").read_bytes())
    replacement.replace(source / "masks" / "p007.png")
    after_edit = land_dataset(str(source), out, tmp_path / "cache")
    assert after_edit.reused is False
    assert after_edit.digest != first.digest
    assert (out / "masks" / "p007.png").read_bytes() == (source / "masks" / "p008.png").read_bytes()
    assert folders.read_marker(out)["digest"] == after_edit.digest
    assert leftovers(tmp_path) == []


def test_a_landed_folder_edited_in_place_is_landed_again(dataset: Path, tmp_path: Path) -> None:
    """The fingerprint of a URL or handle says nothing of the files: the digest must catch it."""
    archive = zip_folder(dataset.parent, tmp_path / "person.zip")
    out = tmp_path / "out"
    first = land_dataset(str(archive), out, tmp_path / "cache")
    (out / "masks" / "p001.png").write_bytes(b"scribbled over")
    again = land_dataset(str(archive), out, tmp_path / "cache")
    assert again.reused is False
    assert again.digest == first.digest
    assert (out / "masks" / "p001.png").read_bytes() == (
        dataset.parent / "masks" / "p001.png"
    ).read_bytes()


# --- problems in the rows ---------------------------------------------------------------------


def test_rows_with_missing_files_are_counted_not_fatal(tmp_path: Path) -> None:
    index = make_dataset(tmp_path / "raw", 6)
    root = index.parent
    (root / "images" / "p001.png").unlink()
    (root / "masks" / "p004.png").unlink()
    frame = pd.read_csv(index, index_col=0)
    frame.loc[5, "masks"] = None
    frame.to_csv(index)
    landed = land_dataset(str(root), tmp_path / "out", tmp_path / "cache")
    assert (landed.rows, landed.usable_rows) == (6, 3)
    assert [row for row, _ in landed.problems] == [1, 4, 5]
    reasons = dict(landed.problems)
    assert "missing file" in reasons[1] and "p001.png" in reasons[1]
    assert "missing file" in reasons[4] and "masks/p004.png" in reasons[4]
    assert "no mask" in reasons[5]
    assert (tmp_path / "out" / "df.csv").is_file()


def test_zero_usable_rows_is_fatal(tmp_path: Path) -> None:
    index = make_dataset(tmp_path / "raw", 3)
    for path in (index.parent / "images").iterdir():
        path.unlink()
    with pytest.raises(PipelineError, match="none of the 3 rows") as caught:
        land_dataset(str(index.parent), tmp_path / "out", tmp_path / "cache")
    assert str(index.parent) in str(caught.value)
    assert "p000.png" in str(caught.value)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_messages_name_the_dataset_not_the_staging_folder(tmp_path: Path) -> None:
    index = make_dataset(tmp_path / "raw", 3)
    for path in (index.parent / "images").iterdir():
        path.unlink()
    archive = zip_folder(index.parent, tmp_path / "person.zip", prefix=NESTED)
    with pytest.raises(PipelineError, match="none of the 3 rows") as caught:
        land_dataset(str(archive), tmp_path / "out", tmp_path / "cache")
    message = str(caught.value)
    assert str(archive) in message
    assert "first problem: missing file images/p000.png" in message
    assert ".staging-" not in message and str(tmp_path / ".out") not in message
    assert leftovers(tmp_path) == []


def test_problems_name_files_relative_to_the_dataset(tmp_path: Path) -> None:
    index = make_dataset(tmp_path / "raw", 4)
    (index.parent / "masks" / "p002.png").unlink()
    archive = zip_folder(index.parent, tmp_path / "person.zip", prefix=NESTED)
    landed = land_dataset(str(archive), tmp_path / "out", tmp_path / "cache")
    assert landed.problems == [(2, "missing file masks/p002.png")]


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_a_df_csv_without_rows_says_so(tmp_path: Path, kind: str) -> None:
    index = make_dataset(tmp_path / "raw", 2)
    index.write_text(",images,masks,collages\n")
    source = index.parent if kind == "folder" else zip_folder(index.parent, tmp_path / "p.zip")
    with pytest.raises(PipelineError) as caught:
        land_dataset(str(source), tmp_path / "out", tmp_path / "cache")
    assert str(caught.value).startswith(f"df.csv of {source} lists no rows")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


# --- http(s) ----------------------------------------------------------------------------------


def test_url_zip_lands_and_is_cached(dataset: Path, tmp_path: Path, server: LocalServer) -> None:
    archive = zip_folder(dataset.parent, tmp_path / "person.zip", prefix=NESTED)
    server.routes["/files/person.zip"] = (200, archive.read_bytes())
    url = server.url("/files/person.zip")
    cache = tmp_path / "cache"

    landed = land_dataset(url, tmp_path / "out", cache)
    assert (landed.kind, landed.rows, landed.usable_rows, landed.reused) == ("url", 20, 20, False)
    assert (tmp_path / "out" / "df.csv").read_bytes() == dataset.read_bytes()
    assert server.requests == ["/files/person.zip"]
    assert [path.suffix for path in cache.iterdir()] == [".zip"]

    assert land_dataset(url, tmp_path / "out", cache).reused is True
    elsewhere = land_dataset(url, tmp_path / "elsewhere", cache)
    assert elsewhere.reused is False
    assert elsewhere.digest == landed.digest
    assert server.requests == ["/files/person.zip"]  # both answered from the cache


def test_url_404_names_the_url_and_leaves_no_part_file(tmp_path: Path, server: LocalServer) -> None:
    url = server.url("/missing/person.zip")
    cache = tmp_path / "cache"
    with pytest.raises(PipelineError, match="could not download") as caught:
        land_dataset(url, tmp_path / "out", cache)
    assert url in str(caught.value)
    assert "404" in str(caught.value)
    assert server.requests == ["/missing/person.zip"]
    assert list(cache.glob("*")) == []
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


def test_url_that_serves_no_zip_is_not_cached(
    dataset: Path, tmp_path: Path, server: LocalServer
) -> None:
    server.routes["/person.zip"] = (200, b"<html>please log in</html>")
    url, cache = server.url("/person.zip"), tmp_path / "cache"
    with pytest.raises(PipelineError) as caught:
        land_dataset(url, tmp_path / "out", cache)
    assert url in str(caught.value)
    assert list(cache.glob("*")) == []
    # Once the server is fixed, the same URL is fetched again rather than failing from the cache.
    server.routes["/person.zip"] = (
        200,
        zip_folder(dataset.parent, tmp_path / "p.zip").read_bytes(),
    )
    assert land_dataset(url, tmp_path / "out", cache).usable_rows == 20
    assert server.requests == ["/person.zip", "/person.zip"]


# --- kaggle -----------------------------------------------------------------------------------


def test_kaggle_handle_lands_what_kagglehub_returns(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kagglehub

    kaggle_cache = tmp_path / "kaggle" / "datasets" / "owner" / "person" / "versions" / "1"
    nested = kaggle_cache / NESTED
    nested.mkdir(parents=True)
    for path in dataset.parent.rglob("*"):
        target = nested / path.relative_to(dataset.parent)
        if path.is_dir():
            target.mkdir()
        else:
            target.write_bytes(path.read_bytes())
    asked: list[str] = []

    def fake_download(handle: str, *args: object, **kwargs: object) -> str:
        asked.append(handle)
        return str(kaggle_cache)

    monkeypatch.setattr(kagglehub, "dataset_download", fake_download)
    landed = land_dataset("owner/person/versions/1", tmp_path / "out", tmp_path / "cache")
    assert asked == ["owner/person/versions/1"]
    assert (landed.kind, landed.rows, landed.usable_rows) == ("kaggle", 20, 20)
    assert (tmp_path / "out" / "df.csv").read_bytes() == dataset.read_bytes()
    assert all(path.is_file() for path in _listed_files(tmp_path / "out"))
    assert (nested / "df.csv").is_file()  # kagglehub's own cache is left as it was


def test_kaggle_failure_names_the_handle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kagglehub

    def failing_download(handle: str, *args: object, **kwargs: object) -> str:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(kagglehub, "dataset_download", failing_download)
    with pytest.raises(PipelineError, match="Kaggle download") as caught:
        land_dataset("owner/person", tmp_path / "out", tmp_path / "cache")
    assert "owner/person" in str(caught.value)
    assert "Name or service not known" in str(caught.value)
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


# --- interruption -----------------------------------------------------------------------------


def test_an_interrupted_copy_keeps_the_previous_output(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    land_dataset(str(dataset.parent), out, tmp_path / "cache")
    before = file_state(out)
    other = make_dataset(tmp_path / "other", 10, size=(40, 40)).parent
    real_copy = download._link_or_copy
    copied: list[str] = []

    def copy_then_die(source: str, destination: str) -> None:
        if len(copied) == 5:
            raise KeyboardInterrupt  # the user pressed Ctrl-C half-way
        copied.append(source)
        real_copy(source, destination)

    monkeypatch.setattr(download, "_link_or_copy", copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        land_dataset(str(other), out, tmp_path / "cache")
    assert len(copied) == 5
    assert file_state(out) == before
    assert leftovers(tmp_path) == []


def test_a_download_cut_off_half_way_keeps_the_previous_output(
    dataset: Path, tmp_path: Path, server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import requests

    out, cache = tmp_path / "out", tmp_path / "cache"
    land_dataset(str(dataset.parent), out, cache)
    before = file_state(out)
    archive = zip_folder(dataset.parent, tmp_path / "person.zip")
    server.routes["/person.zip"] = (200, archive.read_bytes())
    real_iter_content = requests.Response.iter_content
    sent: list[int] = []

    def cut_off(self: requests.Response, chunk_size: int = 1, decode_unicode: bool = False):
        for block in real_iter_content(self, chunk_size=1024):
            sent.append(len(block))
            yield block
            if len(sent) == 3:
                raise requests.ConnectionError("connection reset by peer")

    monkeypatch.setattr(requests.Response, "iter_content", cut_off)
    with pytest.raises(PipelineError, match="could not download") as caught:
        land_dataset(server.url("/person.zip"), out, cache)
    assert server.url("/person.zip") in str(caught.value)
    assert sent == [1024, 1024, 1024]
    assert list(cache.glob("*")) == []  # neither a .part nor a truncated .zip
    assert file_state(out) == before
    assert folders.read_marker(out)["source"] == str(dataset.parent)
    assert leftovers(tmp_path) == []


def test_a_new_generator_version_lands_synthetic_data_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = land_dataset("synthetic:2", tmp_path / "data", tmp_path / "cache")
    assert land_dataset("synthetic:2", tmp_path / "data", tmp_path / "cache").reused
    monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
    again = land_dataset("synthetic:2", tmp_path / "data", tmp_path / "cache")
    assert not again.reused and again.digest == first.digest  # same pictures, generated anew


def test_a_full_disk_while_landing_keeps_the_previous_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "raw"
    land_dataset("synthetic:3", out, tmp_path / "cache")
    before = file_state(out)
    real_link_or_copy = download._link_or_copy
    landed: list[Path] = []

    def disk_full_on_the_fourth(source: Path, destination: Path) -> None:
        landed.append(destination)
        if len(landed) == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(destination))
        real_link_or_copy(source, destination)

    monkeypatch.setattr(download, "_link_or_copy", disk_full_on_the_fourth)
    with pytest.raises(PipelineError) as raised:
        land_dataset("synthetic:4", out, tmp_path / "cache")
    message = str(raised.value)
    assert f"no space left on the disk of {tmp_path} to write the dataset: it needed" in message
    assert "--output_dir (main: --raw_dir) on another disk" in message
    assert file_state(out) == before
    assert leftovers(tmp_path) == []


def test_the_generator_is_imported_only_for_a_synthetic_source(tmp_path: Path) -> None:
    """Every command parses its params through download's source check; the 700-line
    generator loads only when a source asks for generated photos."""
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "import pipeline.params, pipeline.entrypoints.download\n"
        "from pipeline.data.download import land_dataset, source_fingerprint\n"
        "source_fingerprint('data/raw')\n"
        "before = 'pipeline.data.synthetic' in sys.modules\n"
        f"land_dataset('synthetic:2', Path({str(tmp_path / 'raw')!r}), Path({str(tmp_path)!r}))\n"
        "print(before, 'pipeline.data.synthetic' in sys.modules)\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True
    )
    assert found.stdout.split() == ["False", "True"]
