"""Builders for tests of the logged model: networks with known outputs, photos, a split cache."""

from __future__ import annotations

import io
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.tracking import MlflowClient
from PIL import ExifTags, Image

from pipeline.data.preprocess import preprocess
from pipeline.data.synthetic import generate_dataset
from pipeline.model.inputs import to_model_input
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.tracking.models import log_segmentation_model
from tests.conftest import isolated_environment

IMAGE_SIZE = 32


def constant_net(logit: float) -> UNet:
    """A U-Net whose every pixel gets `logit`: all person above 0, no person below."""
    net = UNet(NetworkConfig(in_channels=3, base_channels=2, depth=1))
    with torch.no_grad():
        net.outc.weight.zero_()
        net.outc.bias.fill_(logit)
    return net


def varied_net(seed: int = 0) -> UNet:
    """A random U-Net shifted so that about half of a photo's pixels come out as person, so
    mask comparisons have both classes to get wrong."""
    torch.manual_seed(seed)
    net = UNet(NetworkConfig(in_channels=3, base_channels=4, depth=2)).eval()
    reference = torch.from_numpy(photo_pixels((IMAGE_SIZE, IMAGE_SIZE), seed)).permute(2, 0, 1)
    with torch.no_grad():
        logits = net(to_model_input(reference[None]))
        net.outc.bias -= logits.median()
    return net


def log_model(
    net: UNet, image_size: int = IMAGE_SIZE, experiment: str = "unet-person", onnx: bool = False
) -> str:
    """Log `net` as the pipeline's train step does, in a run of its own; returns its URI. With
    the ONNX export only where a test runs it (`onnx`): it costs seconds per model."""
    found = MlflowClient().get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else MlflowClient().create_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name="model"):
        example = photo_pixels((image_size, image_size), 1)
        return log_segmentation_model(net, image_size, example, onnx).model_uri


def champion_store(folder: Path, net: UNet) -> dict[str, str]:
    """A fresh store in `folder` whose unet-person@champion is `net`; the environment that
    points at it (this process tracks into it too)."""
    env = isolated_environment(folder)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("unet-person")
    version = mlflow.register_model(log_model(net), "unet-person")
    MlflowClient().set_registered_model_alias("unet-person", "champion", version.version)
    return env


def photo_pixels(size: tuple[int, int], seed: int) -> np.ndarray:
    """An H x W x 3 uint8 picture with smooth shapes and noise; `size` is (width, height)."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [
            128 + 100 * np.sin(x / max(width, 1) * 6 + seed),
            128 + 100 * np.cos(y / max(height, 1) * 5 - seed),
            (x + y) * 255 / max(width + height, 1),
        ],
        axis=-1,
    )
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def photo_file(
    size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG", seed: int = 0, orientation=None
) -> bytes:
    """Encoded photo bytes of `size` (width, height) in `mode` and `fmt`, optionally with an
    EXIF orientation tag (6 means: turn 90 degrees clockwise to view)."""
    image = Image.fromarray(photo_pixels(size, seed)).convert(mode)
    buffer = io.BytesIO()
    if orientation is None:
        image.save(buffer, format=fmt)
    else:
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = orientation
        image.save(buffer, format=fmt, exif=exif.tobytes())
    return buffer.getvalue()


def blank_png(size: tuple[int, int]) -> bytes:
    """A black 1-bit PNG of `size` (width, height): 13000 x 13000 pixels in about 27 KB."""
    buffer = io.BytesIO()
    Image.new("1", size).save(buffer, format="PNG")
    return buffer.getvalue()


def split_cache(folder: Path, rows: int = 16) -> Path:
    """A preprocessed split cache of synthetic photos at IMAGE_SIZE; returns its folder."""
    generate_dataset(folder / "raw", rows)
    report = preprocess(
        raw_dir=folder / "raw",
        output_dir=folder / "processed",
        image_size=IMAGE_SIZE,
        val_fraction=0.25,
        test_fraction=0.25,
        seed=0,
        num_workers=1,
    )
    return report.output_dir
