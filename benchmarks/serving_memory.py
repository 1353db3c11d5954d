"""Serving memory: the peak memory and time of one photo through the logged model, by photo size,
for the mask path before issue 9 (float32 logits at the photo's size) and after it (banded
upsampling into a bool mask), and of the largest allowed photo through `mlflow models serve`.

Every figure is measured in a fresh process (`python -m benchmarks.serving_memory` runs one),
after a small warm-up request: the peak resident size during the request less the resident
size just before it, so imports, the model and torch's first-call allocations do not count.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import io
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import requests
import torch
from mlflow.tracking import MlflowClient
from PIL import Image, ImageOps

from benchmarks.measure import descendants
from benchmarks.report import markdown_table
from pipeline.images import encode_png, upright_photo
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.serving.segmenter import (
    ARCHITECTURE,
    DEFAULT_THRESHOLD,
    INPUT_COLUMN,
    OUTPUT_COLUMN,
    WEIGHTS,
    Segmenter,
)
from pipeline.tracking.models import log_segmentation_model

TITLE = "Serving memory"
MEGAPIXELS = (1.0, 4.0, 16.0, 48.0)
SERVED_SIDE = 8000  # 64 MP: the largest photo the default limit admits
IMAGE_SIZE = 256
NETWORK = {"base_channels": 64, "depth": 4, "batch_norm": True}  # the `default` recipe's U-Net
PATHS = ("decode", "before", "after")
START_TIMEOUT_S = 180
MB = 1e6
REPOSITORY = Path(__file__).resolve().parent.parent


class FloatLogitsSegmenter(Segmenter):
    """The path before issue 9, for comparison only: the photo decoded with a transposed copy
    and a converted copy, copied again to an array, its logits resized to the photo's size as
    float32 (`Segmenter.logits`), then thresholded."""

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        masks = []
        for value in model_input[INPUT_COLUMN]:
            with Image.open(io.BytesIO(base64.b64decode(value))) as handle:
                handle.load()
                photo = ImageOps.exif_transpose(handle)
            mask = self.mask(photo.convert("RGB"), DEFAULT_THRESHOLD).astype(np.uint8) * 255
            masks.append(base64.b64encode(encode_png(mask)).decode("ascii"))
        return pd.DataFrame({OUTPUT_COLUMN: masks})

    def mask(self, photo: Image.Image, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
        logits = self.logits(np.asarray(photo.convert("RGB"))[np.newaxis])
        return (logits[0, 0] > math.log(threshold / (1 - threshold))).numpy()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--megapixels", type=float, nargs="+", default=list(MEGAPIXELS))
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per figure")
    parser.add_argument(
        "--served-side", type=int, default=SERVED_SIDE, help="square photo to serve; 0: none"
    )


def photo_jpeg(width: int, height: int) -> bytes:
    """A photo-like JPEG (quality 90): smooth colour gradients and one channel of noise, which
    compresses about as well as a phone's photo (14 MB at 48 MP)."""
    channels = (
        Image.linear_gradient("L").resize((width, height)),
        Image.radial_gradient("L").resize((width, height)),
        Image.effect_noise((width, height), 40),
    )
    buffer = io.BytesIO()
    Image.merge("RGB", channels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def photo_size(megapixels: float) -> tuple[int, int]:
    """Width and height of a 4:3 photo of about `megapixels`."""
    height = round(math.sqrt(megapixels * MB * 3 / 4))
    return round(height * 4 / 3), height


def write_artifacts(folder: Path) -> dict[str, str]:
    """The Segmenter's artifacts for the `default` U-Net with random weights: the network's
    cost does not depend on the photo, nor on what it learned."""
    torch.manual_seed(0)
    net = UNet(NetworkConfig.from_dict(NETWORK))
    artifacts = {WEIGHTS: str(folder / "unet.pt"), ARCHITECTURE: str(folder / "unet.json")}
    torch.save(net.state_dict(), artifacts[WEIGHTS])
    Path(artifacts[ARCHITECTURE]).write_text(json.dumps({**NETWORK, "image_size": IMAGE_SIZE}))
    return artifacts


def memory_bytes(pid: int | str, field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def release_free_memory() -> None:
    """Hand the C heap's free memory back to the system (glibc's malloc_trim), so that the
    resident size before a request is memory in use, not memory the warm-up left free."""
    ctypes.CDLL(None).malloc_trim(0)


def reset_peak(pid: int | str) -> None:
    """Set a process's peak resident size (VmHWM) to its resident size now (Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def request_frame(photo: bytes) -> pd.DataFrame:
    return pd.DataFrame({INPUT_COLUMN: [base64.b64encode(photo).decode("ascii")]})


def measure_here(path: str, artifacts: dict[str, str], photo: Path) -> dict[str, float]:
    """One request in this process: its peak memory growth and its time."""
    segmenter = FloatLogitsSegmenter() if path == "before" else Segmenter()
    segmenter.load_context(SimpleNamespace(artifacts=artifacts))
    segmenter.predict(None, request_frame(photo_jpeg(640, 480)))
    request = request_frame(photo.read_bytes())
    release_free_memory()
    reset_peak("self")
    resident = memory_bytes("self", "VmRSS")
    started = time.perf_counter()
    if path == "decode":
        upright_photo(base64.b64decode(request[INPUT_COLUMN][0]), segmenter.max_pixels)
    else:
        segmenter.predict(None, request)
    seconds = time.perf_counter() - started
    return {"mb": (memory_bytes("self", "VmHWM") - resident) / MB, "s": seconds}


def measure(path: str, artifacts_file: Path, photo: Path, repeats: int) -> dict[str, float]:
    """The median of `repeats` fresh processes, each measuring one request."""
    runs = []
    for _ in range(repeats):
        child = subprocess.run(
            [sys.executable, "-m", __spec__.name, path, str(artifacts_file), str(photo)],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            raise RuntimeError(f"measuring {path} on {photo.name} failed:\n{child.stderr[-3000:]}")
        runs.append(json.loads(child.stdout.splitlines()[-1]))
    return {key: round(statistics.median(run[key] for run in runs), 2) for key in ("mb", "s")}


def measure_served(folder: Path, side: int, repeats: int) -> dict[str, float]:
    """A square photo of `side` through a real `mlflow models serve`, `repeats` times: the
    serving process's peak over all the requests less its resident size before the first, and
    the median time of a request (HTTP included)."""
    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient()
    experiment = client.create_experiment("benchmarks", (folder / "mlruns").as_uri())
    torch.manual_seed(0)
    with mlflow.start_run(experiment_id=experiment):
        example = np.asarray(Image.open(io.BytesIO(photo_jpeg(64, 64))))
        model_uri = log_segmentation_model(
            UNet(NetworkConfig.from_dict(NETWORK)), IMAGE_SIZE, example
        ).model_uri
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bin_folder = Path(sys.executable).parent
    log = folder / "serve.log"
    server = subprocess.Popen(
        [
            *(bin_folder / "mlflow", "models", "serve", "-m", model_uri),
            *("--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)),
        ],
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": tracking_uri,
            "PATH": f"{bin_folder}:{os.environ['PATH']}",
        },
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(server, url, log)
        small, photo = photo_jpeg(640, 480), photo_jpeg(side, side)
        _invoke(url, small)
        worker = max(
            [server.pid, *descendants(server.pid)], key=lambda pid: memory_bytes(pid, "VmRSS")
        )
        reset_peak(worker)
        resident = memory_bytes(worker, "VmRSS")
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            _invoke(url, photo)
            seconds.append(time.perf_counter() - started)
        growth = memory_bytes(worker, "VmHWM") - resident
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    return {"mb": round(growth / MB, 2), "s": round(statistics.median(seconds), 2)}


def _wait_until_up(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow models serve stopped:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/ping", timeout=2).ok:
                return
        except requests.ConnectionError:
            time.sleep(0.5)
    raise RuntimeError(f"no answer on {url}:\n{log.read_text()[-3000:]}")


def _invoke(url: str, photo: bytes) -> None:
    rows = [[base64.b64encode(photo).decode("ascii")]]
    payload = {"dataframe_split": {"columns": [INPUT_COLUMN], "data": rows}}
    answer = requests.post(f"{url}/invocations", json=payload, timeout=600)
    answer.raise_for_status()


def run(options: argparse.Namespace) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="serving-memory-") as scratch:
        folder = Path(scratch)
        artifacts_file = folder / "artifacts.json"
        artifacts_file.write_text(json.dumps(write_artifacts(folder)))
        network_photo = folder / "network.jpg"
        network_photo.write_bytes(photo_jpeg(IMAGE_SIZE, IMAGE_SIZE))
        network = measure("after", artifacts_file, network_photo, options.repeats)
        for megapixels in options.megapixels:
            width, height = photo_size(megapixels)
            photo = folder / f"{width}x{height}.jpg"
            photo.write_bytes(photo_jpeg(width, height))
            row = {"width": width, "height": height, "jpeg_mb": round(photo.stat().st_size / MB, 1)}
            for path in PATHS:
                row[path] = measure(path, artifacts_file, photo, options.repeats)
            rows.append(row)
            print(f"measured {width}x{height}", file=sys.stderr)
        side = options.served_side
        served = {"side": side, **measure_served(folder, side, options.repeats)} if side else None
    figures = {
        "versions": {name: version(name) for name in ("torch", "pillow", "numpy", "mlflow")},
        "network": {**NETWORK, "image_size": IMAGE_SIZE, **network},
        "repeats": options.repeats,
        "photos": rows,
        "served": served,
    }
    print(table(figures))
    if served:
        print(served_sentence(served))
    return figures


def table(figures: dict) -> str:
    header = [
        "photo", "MP", "JPEG MB", "decode only MB", "before MB", "after MB", "before MB/MP",
        "after MB/MP", "before s", "after s",
    ]  # fmt: skip
    rows = []
    for row in figures["photos"]:
        megapixels = row["width"] * row["height"] / MB
        before, after = row["before"], row["after"]
        rows.append(
            [
                f"{row['width']}x{row['height']}",
                f"{megapixels:.1f}",
                row["jpeg_mb"],
                f"{row['decode']['mb']:.0f}",
                f"{before['mb']:.0f}",
                f"{after['mb']:.0f}",
                f"{before['mb'] / megapixels:.1f}",
                f"{after['mb'] / megapixels:.1f}",
                f"{before['s']:.2f}",
                f"{after['s']:.2f}",
            ]
        )
    return markdown_table(header, rows)


def served_sentence(served: dict) -> str:
    side = served["side"]
    megapixels = side * side / MB
    return (
        f"Through `mlflow models serve` (one uvicorn worker, warmed up by a small request), a "
        f"{side}x{side} JPEG ({megapixels:.0f} MP, the largest photo the default limit admits) "
        f"raised the serving process's peak by {served['mb']:.0f} MB "
        f"({served['mb'] / megapixels:.1f} bytes a pixel, the JSON request included; the "
        f"network's activations stay resident between requests, so they are not in it) and "
        f"took {served['s']:.1f} s a request."
    )


def _per_pixel_growth(photos: list[dict], path: str) -> float:
    """Bytes a pixel that the peak grew by between the two largest photos, where the network's
    fixed cost no longer decides the peak."""
    smaller, larger = sorted(photos, key=lambda row: row["width"] * row["height"])[-2:]
    pixels = larger["width"] * larger["height"] - smaller["width"] * smaller["height"]
    return (larger[path]["mb"] - smaller[path]["mb"]) * MB / pixels


EXPLANATION = """\
What one photo costs the process that serves the model: `Segmenter.predict`, base64 text
in, PNG mask out. **before** is the mask path before issue 9, kept in
`benchmarks/serving_memory.py` for comparison: the photo copied to an array, the logits resized
to the photo's size as float32 (`F.interpolate`), then thresholded. **after** is the path served
now: the logits are upsampled band by band and thresholded straight into a bool mask, and the
photo is resized for the network without a copy at full size. **decode only** is decoding the
photo (`upright_photo`), which both do first.

Each figure is the peak resident memory during one request less the resident memory just
before it, in a fresh process after a small warm-up request (`python -m benchmarks
serving_memory`). MB are 10^6 bytes, so MB per megapixel is bytes per pixel; at small sizes it
is mostly the network's fixed cost. The photos are 4:3 JPEGs (quality 90) of gradients and
noise; the network is the `default` recipe's U-Net (64 channels, depth 4, 256 x 256 input) with
random weights, whose cost does not depend on the photo.

How to read it: Pillow keeps an RGB pixel in 4 bytes. Decoding now holds one copy: the EXIF
orientation is applied in place and an RGB photo is not converted again (before issue 9 it held
two for a moment, the transpose's copy and `convert("RGB")`'s: the **before** column includes
that). The new path then holds the photo (4 bytes a pixel), the mask (1) and a few MB of bands
besides the network's fixed cost. The old path held, besides the photo and the fixed cost,
copies of the photo (`convert("RGB")`'s, then `np.asarray`'s: 4 and 3 bytes a pixel, more while
Pillow builds the array) and the float32 logits at the photo's size (4) with their threshold
(1). Times are one request's wall-clock seconds, mostly the network's and the PNG's; on a shared
machine they vary by a second or so.

Photos over the limit (`UNET_PERSON_MAX_PIXELS`, 64 MP by default), such as issue 9's 20 KB PNG
of 13000 x 13000 pixels, are refused from their header before any decoding.
"""


def section(results: dict[str, dict]) -> str:
    parts = [f"## {TITLE}\n\n{EXPLANATION}"]
    for machine, figures in sorted(results.items()):
        facts, versions, photos = figures["machine"], figures["versions"], figures["photos"]
        lines = [
            f"### {facts['cpu']}, {facts['cores']} cores, {facts['memory_gib']} GiB",
            "",
            f"`{machine}`, {figures['date']}; torch {versions['torch']}, Pillow "
            f"{versions['pillow']}, NumPy {versions['numpy']}, MLflow {versions['mlflow']}; "
            f"each figure the median of {figures['repeats']} processes.",
            "",
            table(figures),
            "",
            f"Every request pays about {figures['network']['mb']:.0f} MB and "
            f"{figures['network']['s']:.1f} s whatever the photo's size (measured on a "
            f"{IMAGE_SIZE}x{IMAGE_SIZE} photo): the network's activations and its run.",
        ]
        if len(photos) > 1:
            decode, before, after = (_per_pixel_growth(photos, path) for path in PATHS)
            lines[-1] += (
                f" Between the two largest photos the peak grew by {before:.1f} bytes a pixel "
                f"before and {after:.1f} after (decoding alone: {decode:.1f})."
            )
        if figures.get("served"):
            lines += ["", served_sentence(figures["served"])]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    path, artifacts_file, photo = sys.argv[1:4]
    artifacts = json.loads(Path(artifacts_file).read_text())
    print(json.dumps(measure_here(path, artifacts, Path(photo))))
