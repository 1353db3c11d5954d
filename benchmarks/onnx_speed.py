"""PyTorch vs ONNX Runtime on the CPU: masks per second through the Segmenter, with only the
network's runtime changed (see EXPLANATION).

    python -m benchmarks onnx_speed                  # 8 photos a call, 5 repeats
    python -m benchmarks onnx_speed --repeats 3 --photos 4
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch
from PIL import Image

from benchmarks.report import markdown_table
from pipeline.export.onnx_export import export_onnx
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.serving.parity import check_photos
from pipeline.serving.segmenter import (
    ARCHITECTURE,
    INPUT_COLUMN,
    ONNX,
    RUNTIME,
    RUNTIMES,
    WEIGHTS,
    Segmenter,
)

TITLE = "PyTorch vs ONNX Runtime"
IMAGE_SIZE = 256
NETWORK = {"base_channels": 64, "depth": 4, "batch_norm": True}  # the `default` recipe's U-Net
PHOTO_SIZE = (640, 480)
MEASURES = ("network_one", "network_batch", "end_to_end")
EXPLANATION = """\
Masks per second through the Segmenter, the code path `predict` and `mlflow models serve` run,
with only the runtime of the network changed (`--runtime onnx`, `UNET_PERSON_RUNTIME=onnx`).
Two measures, each the median of the timed calls after a warm-up call, the runtimes taking
turns so that other load on the machine falls on both alike:
- **network only**: photos already at image_size through the network (uint8 in, logits out;
  `Segmenter.logits`), one at a time as predict and serving call it, and all in one batch as
  evaluate does;
- **end to end**: `Segmenter.predict` on a batch of 640 x 480 JPEGs (base64 in, PNG masks out):
  decoding, resizing, the network one photo at a time, upsampling, thresholding and the PNG.

The network is the `default` recipe's U-Net (64 channels, depth 4, batch norm, 256 x 256 input)
with random weights, exported as train exports it (opset 20): its cost does not depend on what
it learned.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--photos", type=int, default=8, help="photos per timed call")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per figure (>= 3)")


def write_model(folder: Path) -> dict[str, str]:
    """The Segmenter's artifacts, the ONNX export among them, as train logs them."""
    torch.manual_seed(0)
    net = UNet(NetworkConfig.from_dict(NETWORK).eval())
    artifacts = {
        WEIGHTS: folder / "unet.pt",
        ARCHITECTURE: folder / "unet.json",
        ONNX: folder / "unet.onnx",
    }
    torch.save(net.state_dict(), artifacts[WEIGHTS])
    artifacts[ARCHITECTURE].write_text(json.dumps({**NETWORK, "image_size": IMAGE_SIZE}))
    export_onnx(net, IMAGE_SIZE, artifacts[ONNX])
    return {key: str(path) for key, path in artifacts.items()}


def jpeg_frame(count: int) -> pd.DataFrame:
    """`count` base64 JPEGs of PHOTO_SIZE, as a client sends them."""
    texts = []
    for pixels in check_photos(count, PHOTO_SIZE[1], PHOTO_SIZE[0]):
        buffer = io.BytesIO()
        Image.fromarray(pixels.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=90)
        texts.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return pd.DataFrame({INPUT_COLUMN: texts})


def run(options: argparse.Namespace) -> dict:
    if options.repeats < 3:
        raise SystemExit("--repeats must be at least 3: the figures are medians")
    load_before = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="onnx-speed-") as scratch:
        artifacts = write_model(Path(scratch))
        segmenters = {}
        for runtime in RUNTIMES:
            segmenter = Segmenter()
            context = SimpleNamespace(artifacts=artifacts, model_config={RUNTIME: runtime})
            segmenter.load_context(context)
            segmenters[runtime] = segmenter
        square = check_photos(options.photos, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
        frame = jpeg_frame(options.photos)
        calls = {
            "network_one": lambda segmenter: [segmenter.logits(one[None]) for one in square],
            "network_batch": lambda segmenter: segmenter.logits(square),
            "end_to_end": lambda segmenter: segmenter.predict(None, frame),
        }
        times = {measure: {runtime: [] for runtime in RUNTIMES} for measure in MEASURES}
        for measure, call in calls.items():
            for segmenter in segmenters.values():
                call(segmenter)  # first-call allocations and kernel choices
            for _ in range(options.repeats):  # turns, so passing load falls on both
                for runtime, segmenter in segmenters.items():
                    started = time.perf_counter()
                    call(segmenter)
                    times[measure][runtime].append(time.perf_counter() - started)
        same = all(
            a == b
            for a, b in zip(
                segmenters["torch"].predict(None, frame)["mask"],
                segmenters["onnx"].predict(None, frame)["mask"],
                strict=True,
            )
        )
    figures = {
        "versions": {name: version(name) for name in ("torch", "onnxruntime", "onnx")},
        "threads": {"torch": torch.get_num_threads(), "onnxruntime": "default (one per core)"},
        "network": {**NETWORK, "image_size": IMAGE_SIZE},
        "photos": options.photos,
        "photo_size": list(PHOTO_SIZE),
        "repeats": options.repeats,
        "load_average_before": load_before,
        "same_png_masks": same,
        "masks_per_s": {
            measure: {
                runtime: round(options.photos / statistics.median(seconds), 2)
                for runtime, seconds in by_runtime.items()
            }
            for measure, by_runtime in times.items()
        },
    }
    print(table(figures))
    return figures


def table(figures: dict) -> str:
    photos = figures["photos"]
    names = {
        "network_one": "network only, 256 x 256, one photo a call",
        "network_batch": f"network only, 256 x 256, a batch of {photos}",
        "end_to_end": "end to end (`predict`'s path), 640 x 480 JPEGs",
    }
    rows = [
        [
            names[measure],
            f"{rates['torch']:.2f}",
            f"{rates['onnx']:.2f}",
            f"{rates['onnx'] / rates['torch']:.2f}",
        ]
        for measure, rates in figures["masks_per_s"].items()
    ]
    header = ["measure", "PyTorch masks/s", "ONNX Runtime masks/s", "ONNX Runtime / PyTorch"]
    return markdown_table(header, rows)


def section(results: dict[str, dict]) -> str:
    parts = [f"## {TITLE}\n\n{EXPLANATION}"]
    for machine, figures in sorted(results.items()):
        facts, versions = figures["machine"], figures["versions"]
        parts.append(
            "\n".join(
                [
                    f"### {facts['cpu']}, {facts['cores']} cores, {facts['memory_gib']} GiB",
                    "",
                    f"`{machine}`, {figures['date']}; torch {versions['torch']} "
                    f"({figures['threads']['torch']} threads), ONNX Runtime "
                    f"{versions['onnxruntime']} (CPU), onnx {versions['onnx']}; "
                    f"{figures['photos']} photos a call, each figure the median of "
                    f"{figures['repeats']} calls; 1-minute load average "
                    f"{figures['load_average_before']} before the run (other jobs on the "
                    "machine). The two runtimes' PNG masks were "
                    f"{'byte-identical' if figures['same_png_masks'] else 'not all identical'}.",
                    "",
                    table(figures),
                ]
            )
            + "\n"
        )
    return "\n".join(parts)
