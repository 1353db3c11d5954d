"""The logged model in-process: photos of any size and mode in, masks at their size out, the
network's math unchanged from training, and clear errors for what is not a photo."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow.exceptions import MlflowException
from PIL import Image

from pipeline.evaluation.metrics import hard_predictions
from pipeline.images import decode_mask, encode_png
from pipeline.model.inputs import to_model_input
from pipeline.serving import segmenter as segmenter_module
from pipeline.serving.segmenter import threshold_upsampled
from pipeline.tracking.models import segmenter_of
from tests.segmenters import (
    IMAGE_SIZE,
    constant_net,
    log_model,
    photo_file,
    photo_pixels,
    varied_net,
)


def frame(*photos: bytes) -> pd.DataFrame:
    return pd.DataFrame({"image": [base64.b64encode(photo).decode("ascii") for photo in photos]})


def masks_of(answer: pd.DataFrame) -> list[np.ndarray]:
    assert list(answer.columns) == ["mask"]
    return [decode_mask(base64.b64decode(text)) for text in answer["mask"]]


@pytest.fixture
def varied() -> mlflow.pyfunc.PyFuncModel:
    return mlflow.pyfunc.load_model(log_model(varied_net()))


PHOTOS = {
    "rgb jpeg, wide": (photo_file((53, 31), "RGB", "JPEG"), (53, 31)),
    "rgba png, tall": (photo_file((20, 70), "RGBA"), (20, 70)),
    "grey png": (photo_file((33, 33), "L"), (33, 33)),
    "palette gif": (photo_file((40, 25), "P", "GIF"), (40, 25)),
    "at image_size": (photo_file((IMAGE_SIZE, IMAGE_SIZE)), (IMAGE_SIZE, IMAGE_SIZE)),
    # Stored 60 wide and 24 high, shown turned: the mask follows the upright photo.
    "exif rotated jpeg": (photo_file((60, 24), "RGB", "JPEG", orientation=6), (24, 60)),
}


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_a_mask_per_photo_at_its_upright_size(varied, name: str) -> None:
    data, size = PHOTOS[name]
    (mask,) = masks_of(varied.predict(frame(data)))
    assert mask.shape == (size[1], size[0])
    assert 0 < mask.mean() < 1, "a mask with both classes, or the size check says little"


def test_several_photos_of_different_sizes_in_one_request(varied) -> None:
    photos = [data for data, _ in PHOTOS.values()]
    masks = masks_of(varied.predict(frame(*photos)))
    assert [mask.shape[::-1] for mask in masks] == [size for _, size in PHOTOS.values()]
    for photo, mask in zip(photos, masks, strict=True):
        (alone,) = masks_of(varied.predict(frame(photo)))
        np.testing.assert_array_equal(alone, mask)


def test_network_math_is_training_math_and_masks_are_evaluates(varied) -> None:
    segmenter = segmenter_of(varied, "varied")
    pixels = np.stack([photo_pixels((IMAGE_SIZE, IMAGE_SIZE), seed) for seed in range(3)])
    net = varied_net().eval()
    with torch.no_grad():
        expected = net(to_model_input(torch.from_numpy(pixels).permute(0, 3, 1, 2)))
    logits = segmenter.logits(pixels)
    torch.testing.assert_close(logits, expected)
    served = masks_of(varied.predict(frame(*(encode_png(photo) for photo in pixels))))
    np.testing.assert_array_equal(np.stack(served), hard_predictions(logits)[:, 0].bool().numpy())


def test_threshold_is_a_probability() -> None:
    # Every logit is 0, so every pixel has P(person) = 0.5 exactly.
    model = mlflow.pyfunc.load_model(log_model(constant_net(0.0)))
    photo = frame(photo_file((30, 20)))
    (below,) = masks_of(model.predict(photo, params={"threshold": 0.4}))
    (above,) = masks_of(model.predict(photo, params={"threshold": 0.6}))
    (default,) = masks_of(model.predict(photo))
    assert below.all()
    assert not above.any()
    assert not default.any(), "0.5 is not above the default threshold 0.5"


def test_masks_are_0_or_255_grey_pngs(varied) -> None:
    answer = varied.predict(frame(photo_file((41, 29))))
    with Image.open(io.BytesIO(base64.b64decode(answer["mask"][0]))) as mask:
        assert (mask.format, mask.mode, mask.size) == ("PNG", "L", (41, 29))
        assert set(np.unique(np.asarray(mask))) == {0, 255}


def test_raw_bytes_work_in_process(varied) -> None:
    data = photo_file((25, 35))
    (from_bytes,) = masks_of(varied.predict(pd.DataFrame({"image": [data]})))
    (from_text,) = masks_of(varied.predict(frame(data)))
    np.testing.assert_array_equal(from_bytes, from_text)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("this is not base64!", "row 0 of column 'image' is not base64"),
        (base64.b64encode(b"just some text").decode(), "row 0 of column 'image' is not an image"),
        (
            base64.b64encode(photo_file((64, 64))[:200]).decode(),
            "row 0 of column 'image' is an unreadable image",
        ),
    ],
)
def test_what_is_not_a_photo_is_refused_by_name(varied, value: str, message: str) -> None:
    with pytest.raises(MlflowException, match=message) as refused:
        varied.predict(pd.DataFrame({"image": [value]}))
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"


def test_threshold_outside_zero_and_one_is_refused(varied) -> None:
    with pytest.raises(MlflowException, match=r"threshold=1\.5 must be between 0 and 1"):
        varied.predict(frame(photo_file((8, 8))), params={"threshold": 1.5})


def test_logged_model_describes_itself(varied) -> None:
    metadata = varied.metadata
    assert metadata.get_input_schema().input_names() == ["image"]
    assert metadata.get_output_schema().input_names() == ["mask"]
    threshold, tta = metadata.get_params_schema().params
    assert (threshold.name, threshold.default) == ("threshold", 0.5)
    assert (tta.name, tta.default) == ("tta", False)
    # The request the MLflow UI shows on the model's page: a real photo, base64 PNG.
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{metadata.model_id}"))
    request = json.loads((folder / "serving_input_example.json").read_text())
    assert request["dataframe_split"]["columns"] == ["image"]
    (row,) = request["dataframe_split"]["data"]
    with Image.open(io.BytesIO(base64.b64decode(row[0]))) as picture:
        assert picture.format == "PNG" and picture.size == (64, 64)


# A pixel whose interpolated logit is this close to the cut may fall either way: the banded mask
# samples in float64, F.interpolate in float32, whose source positions are rounded to about
# 6e-8 of the source's size (at most a few 1e-5 of a pixel here), which moves a logit by that
# share of the step to its neighbour (a few units at most).
NEAR_CUT = 1e-3
# And at most this share of a mask's pixels may differ at all.
MOST_DIFFERING = 1e-4


def assert_mask_is_thresholded(mask: np.ndarray, logits: np.ndarray, cut: float) -> None:
    """`mask` is `logits > cut` but where a logit is within NEAR_CUT of the cut, and on no more
    than MOST_DIFFERING of its pixels."""
    expected = logits > np.float32(cut)
    assert mask.shape == expected.shape and mask.dtype == bool
    differ = mask != expected
    assert np.all(np.abs(logits[differ] - cut) < NEAR_CUT), np.abs(logits[differ] - cut).max()
    assert differ.sum() <= max(1, MOST_DIFFERING * differ.size), differ.sum()


@pytest.mark.parametrize("source_side", [32, 256])
@pytest.mark.parametrize(
    "size", [(1, 1), (5, 7), (53, 31), (20, 70), (32, 32), (257, 1001), (1999, 3), (700, 430)]
)
def test_banded_mask_is_the_thresholded_interpolation(
    monkeypatch: pytest.MonkeyPatch, source_side: int, size: tuple[int, int]
) -> None:
    # Small bands, so that most sizes take several, the last one ragged.
    monkeypatch.setattr(segmenter_module, "BAND_PIXELS", 4096)
    rng = np.random.default_rng(source_side + size[0])
    logits = (rng.normal(size=(source_side, source_side)) * 4).astype(np.float32)
    interpolated = F.interpolate(
        torch.from_numpy(logits)[None, None], size=size, mode="bilinear", align_corners=False
    )[0, 0].numpy()
    for threshold in (0.5, 0.3, 0.9):
        cut = math.log(threshold / (1 - threshold))
        assert_mask_is_thresholded(threshold_upsampled(logits, size, cut), interpolated, cut)


def test_photo_masks_are_the_thresholded_full_size_logits(varied) -> None:
    """Segmenter.mask, which never makes full-size logits, against Segmenter.logits, which
    does (evaluate's path), on photos at sizes the network does not see."""
    segmenter = segmenter_of(varied, "varied")
    for size in [(257, 129), (33, 1000), (640, 480)]:
        photo = Image.fromarray(photo_pixels(size, seed=3))
        logits = segmenter.logits(np.asarray(photo)[np.newaxis])[0, 0].numpy()
        for threshold in (0.5, 0.3):
            cut = math.log(threshold / (1 - threshold))
            assert_mask_is_thresholded(segmenter.mask(photo, threshold), logits, cut)


def test_pixel_limit_is_the_servers_and_a_request_cannot_raise_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UNET_PERSON_MAX_PIXELS", "1000")
    model = mlflow.pyfunc.load_model(log_model(constant_net(1.0)))
    request = frame(photo_file((20, 10)), photo_file((40, 40)))
    with pytest.raises(MlflowException) as refused:
        model.predict(request, params={"max_pixels": 10**9})
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    for part in ("row 1 of column 'image' is 40x40 pixels", "max_pixels=1000", "at most 1000"):
        assert part in refused.value.message
    assert "environment variable UNET_PERSON_MAX_PIXELS" in refused.value.message
    (at_the_limit,) = masks_of(model.predict(frame(photo_file((40, 25)))))
    assert at_the_limit.shape == (25, 40)


@pytest.mark.parametrize("value", ["lots", "0"])
def test_a_bad_pixel_limit_stops_the_model_loading(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    model_uri = log_model(constant_net(1.0))
    monkeypatch.setenv("UNET_PERSON_MAX_PIXELS", value)
    with pytest.raises(ValueError, match=f"UNET_PERSON_MAX_PIXELS='{value}' is not a positive"):
        mlflow.pyfunc.load_model(model_uri)


def test_flip_tta_averages_the_photo_and_its_mirror_image(varied) -> None:
    segmenter = segmenter_of(varied, "varied")
    pixels = np.stack([photo_pixels((IMAGE_SIZE, IMAGE_SIZE), seed) for seed in range(2)])
    net = varied_net().eval()
    with torch.no_grad():
        batch = to_model_input(torch.from_numpy(pixels).permute(0, 3, 1, 2))
        expected = (net(batch) + net(batch.flip(-1)).flip(-1)) / 2
    torch.testing.assert_close(segmenter.logits(pixels, tta=True), expected)
    assert not torch.equal(segmenter.logits(pixels, tta=True), segmenter.logits(pixels))


def test_with_flip_tta_a_mirrored_photo_gets_exactly_the_mirrored_mask(varied) -> None:
    photo = photo_pixels((45, 29), 3)
    mirrored = np.ascontiguousarray(photo[:, ::-1])
    plain, mirror_plain = masks_of(varied.predict(frame(encode_png(photo), encode_png(mirrored))))
    assert not np.array_equal(mirror_plain, plain[:, ::-1]), "a network that is symmetric already"
    with_tta = masks_of(
        varied.predict(frame(encode_png(photo), encode_png(mirrored)), params={"tta": True})
    )
    np.testing.assert_array_equal(with_tta[1], with_tta[0][:, ::-1])
