"""`predict` on folders of photos: a mask and an overlay per photo at its own size, the table,
what the run logs, and bad files reported and skipped while the rest go on."""

from __future__ import annotations

import base64
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from pipeline.entrypoints import predict
from pipeline.images import PERSON_TINT, TINT_ALPHA, decode_mask, overlay
from pipeline.tracking.tags import ERROR_TAG
from tests.conftest import last_run
from tests.segmenters import blank_png, constant_net, log_model, photo_file, varied_net


@pytest.fixture
def model_uri() -> str:
    return log_model(varied_net())


def run_predict(model_uri: str, input_dir: Path, output_dir: Path, *extra: str) -> int:
    argv = ["--model_uri", model_uri, "--input_dir", str(input_dir), "--output_dir"]
    return predict.main([*argv, str(output_dir), *extra])


def test_masks_overlays_and_table_for_a_folder_with_bad_files(
    model_uri: str, tmp_path: Path, caplog
) -> None:
    photos = tmp_path / "photos"
    (photos / "trip").mkdir(parents=True)
    (photos / "wide.jpg").write_bytes(photo_file((90, 50), "RGB", "JPEG", seed=1))
    (photos / "grey.png").write_bytes(photo_file((40, 40), "L", seed=2))
    (photos / "trip" / "turned.jpg").write_bytes(
        photo_file((70, 36), "RGB", "JPEG", seed=3, orientation=6)
    )
    (photos / "notes.txt").write_text("not a photo")
    (photos / "cut.png").write_bytes(photo_file((64, 64), seed=4)[:300])
    (photos / ".DS_Store").write_bytes(b"\0\0")
    output = tmp_path / "out"

    assert run_predict(model_uri, photos, output) == 0

    table = pd.read_csv(output / "predictions.csv", keep_default_na=False)
    assert table["file"].tolist() == [
        "cut.png",
        "grey.png",
        "notes.txt",
        "trip/turned.jpg",
        "wide.jpg",
    ]
    by_file = table.set_index("file")
    assert by_file.loc["notes.txt", "status"] == "skipped"
    assert "not an image" in by_file.loc["notes.txt", "reason"]
    assert by_file.loc["cut.png", "status"] == "skipped"
    assert "unreadable image" in by_file.loc["cut.png", "reason"]
    sizes = {"wide.jpg": (90, 50), "grey.png": (40, 40), "trip/turned.jpg": (36, 70)}
    for name, (width, height) in sizes.items():
        row = by_file.loc[name]
        assert (row["status"], int(row["width"]), int(row["height"])) == (
            "predicted",
            width,
            height,
        )
        with Image.open(output / row["mask"]) as mask:
            assert (mask.mode, mask.size) == ("L", (width, height))
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
            fraction = float((np.asarray(mask) > 127).mean())
        assert float(row["foreground_fraction"]) == pytest.approx(fraction, abs=1e-6)
        with Image.open(output / row["overlay"]) as overlay:
            assert overlay.size == (width, height)
    assert (output / "masks" / "trip" / "turned.png").is_file()
    assert not list(output.glob("masks/notes*")) and not list(output.glob("masks/cut*"))

    assert "skipped notes.txt: not an image" in caplog.text
    assert "skipped cut.png: an unreadable image" in caplog.text
    run = last_run()
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"photos": 5.0, "predicted": 3.0, "skipped": 2.0}
    assert (
        run.data.tags["unet_person.predicted_with"]
        == mlflow.models.get_model_info(model_uri).model_id
    )
    logged = MlflowClient().download_artifacts(run.info.run_id, "predictions.csv")
    pd.testing.assert_frame_equal(pd.read_csv(logged), pd.read_csv(output / "predictions.csv"))


def test_masks_are_the_models_answer_for_the_photo(model_uri: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    data = photo_file((57, 33), "RGBA", seed=5)
    (photos / "one.png").write_bytes(data)
    assert run_predict(model_uri, photos, tmp_path / "out", "--threshold", "0.3") == 0
    model = mlflow.pyfunc.load_model(model_uri)
    request = pd.DataFrame({"image": [base64.b64encode(data).decode()]})
    answer = model.predict(request, params={"threshold": 0.3})["mask"][0]
    written = (tmp_path / "out" / "masks" / "one.png").read_bytes()
    assert written == base64.b64decode(answer)
    at_default = decode_mask(base64.b64decode(model.predict(request)["mask"][0]))
    assert decode_mask(written).sum() > at_default.sum(), "the threshold reached the model"


def test_overlay_tints_the_person_and_leaves_the_rest(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (20, 10), (0, 0, 255)).save(photos / "blue.png")
    for logit, changed in ((5.0, True), (-5.0, False)):
        output = tmp_path / f"out{logit}"
        assert run_predict(log_model(constant_net(logit)), photos, output) == 0
        pixels = np.asarray(Image.open(output / "overlays" / "blue.jpg"), dtype=int)
        assert bool(np.abs(pixels - [0, 0, 255]).max() > 40) is changed


def test_overlay_blends_the_masked_pixels_as_a_float_blend_would() -> None:
    """Tinted band by band without a float copy of the photo, the overlay is still exactly the
    float32 blend of the masked pixels, rounded."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (700, 1000, 3), dtype=np.uint8)
    mask = rng.random((700, 1000)) < 0.4
    expected = pixels.astype(np.float32)
    expected[mask] = (1 - TINT_ALPHA) * expected[mask] + TINT_ALPHA * PERSON_TINT
    tinted = overlay(Image.fromarray(pixels), mask)
    np.testing.assert_array_equal(np.asarray(tinted), expected.round().astype(np.uint8))


@pytest.mark.parametrize(
    ("limit", "size"),
    [
        (None, (13000, 13000)),  # issue 9: a 20 KB PNG that decodes to 169 megapixels
        ("1000", (40, 40)),
    ],
)
def test_photos_over_the_pixel_limit_are_skipped_unread(
    model_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    limit: str | None,
    size: tuple[int, int],
) -> None:
    if limit is not None:
        monkeypatch.setenv("UNET_PERSON_MAX_PIXELS", limit)
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "big.png").write_bytes(blank_png(size))
    (photos / "ok.png").write_bytes(photo_file((25, 40)))  # 1000 pixels: at the lower limit
    assert run_predict(model_uri, photos, tmp_path / "out") == 0
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    by_file = table.set_index("file")
    assert by_file.loc["ok.png", "status"] == "predicted"
    assert by_file.loc["big.png", "status"] == "skipped"
    width, height = size
    reason = by_file.loc["big.png", "reason"]
    assert f"{width}x{height} pixels" in reason
    assert f"over the limit of max_pixels={limit or 64_000_000}" in reason


def test_a_bad_pixel_limit_is_named(model_uri: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("UNET_PERSON_MAX_PIXELS", "64 MP")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(photo_file((8, 8)))
    assert run_predict(model_uri, tmp_path / "photos", tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert "UNET_PERSON_MAX_PIXELS='64 MP' is not a positive whole number" in error


def test_photos_with_one_name_before_the_suffix_keep_the_first(
    model_uri: str, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "same.jpg").write_bytes(photo_file((30, 30), "RGB", "JPEG"))
    (photos / "same.png").write_bytes(photo_file((20, 40)))
    assert run_predict(model_uri, photos, tmp_path / "out") == 0
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert table["status"].tolist() == ["predicted", "skipped"]
    assert "same.jpg has the same name" in table["reason"][1]
    with Image.open(tmp_path / "out" / "masks" / "same.png") as mask:
        assert mask.size == (30, 30)


def test_output_inside_the_input_folder_is_not_read_again(model_uri: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(photo_file((16, 16)))
    for _ in range(2):
        assert run_predict(model_uri, photos, photos / "out") == 0
    table = pd.read_csv(photos / "out" / "predictions.csv")
    assert table["file"].tolist() == ["a.png"]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing", "is not a folder"),
        ("empty", "holds no files"),
        ("only bad", "none of the 1 files"),
    ],
)
def test_a_folder_without_photos_is_an_error(
    model_uri: str, tmp_path: Path, capsys, setup: str, message: str
) -> None:
    photos = tmp_path / "photos"
    if setup != "missing":
        photos.mkdir()
    if setup == "only bad":
        (photos / "notes.txt").write_text("hello")
    assert run_predict(model_uri, photos, tmp_path / "out") == 2
    assert message in capsys.readouterr().err
    run = last_run()
    assert run.info.status == "FAILED" and message in run.data.tags[ERROR_TAG]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threshold", "1"], "parameter threshold=1.0 must be between 0 and 1"),
        (["--model_uri", "models:/unet-person@champion"], "cannot load model_uri"),
        (["--output_dir", "photos"], "output_dir=photos is input_dir"),
    ],
)
def test_bad_parameters_are_named(
    model_uri: str, tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(photo_file((8, 8)))
    defaults = ["--input_dir", "photos", "--model_uri", model_uri]
    assert predict.main([*defaults, *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("models:/unet-persn@champion", "models:/unet-person@champion"),
        ("models:/unet-person@champoin", "models:/unet-person@champion"),
        ("models:/unet_person/1", "models:/unet-person/1"),
    ],
)
def test_a_misspelt_registered_model_gets_the_nearest_name(
    model_uri: str, tmp_path: Path, capsys, given: str, meant: str
) -> None:
    version = mlflow.register_model(model_uri, "unet-person")
    MlflowClient().set_registered_model_alias("unet-person", "champion", version.version)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(photo_file((8, 8)))
    capsys.readouterr()  # MLflow's lines about registering
    assert run_predict(given, tmp_path / "photos", tmp_path / "out") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"cannot load model_uri={given} (" in line and f"did you mean {meant}?" in line


def test_a_registered_name_nothing_is_near_gets_no_guess(model_uri: str, tmp_path: Path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(photo_file((8, 8)))
    assert run_predict("models:/zebra@stripes", tmp_path / "photos", tmp_path / "out") == 2
    assert "did you mean" not in capsys.readouterr().err
