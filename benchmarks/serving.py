"""Masks per second of a logged model through a real `mlflow models serve` vs the same model
loaded in this process as `predict` loads it (see EXPLANATION).

    python -m benchmarks serving                      # the default recipe's U-Net, 8 photos
    python -m benchmarks serving --width 16 --repeats 3
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pandas as pd
import requests
import torch
from mlflow.pyfunc.scoring_server import CONTENT_TYPE_JSON, invocations
from mlflow.tracking import MlflowClient
from PIL import Image

from benchmarks.measure import (
    BIN,
    MB,
    check_repeats,
    free_port,
    http_ok,
    load_average,
    median,
    mlflow_environment,
    server,
)
from benchmarks.report import Headline, machine_sections, markdown_table
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.serving.parity import check_photos
from pipeline.serving.segmenter import INPUT_COLUMN, OUTPUT_COLUMN
from pipeline.tracking.models import load_predictor, log_segmentation_model

TITLE = "Serving: `mlflow models serve` vs in-process"
TARGET_TEXT = "report the ratio; overhead explained"
SIDES = ("in_process", "handler", "served", "in_process_main_thread")
EXPLANATION = """\
One logged model (the pipeline's `log_segmentation_model`, as train logs it: the Segmenter
pyfunc with its weights, code and ONNX export; random weights, whose cost does not depend on
what they learned), used two ways on the same photos:
- **in-process**: loaded with `pipeline.tracking.models.load_predictor` (what `predict` uses),
  then `predict` on a DataFrame of base64 JPEGs;
- **served**: a real `mlflow models serve --env-manager local` (one uvicorn worker) on
  127.0.0.1, sent the same photos as JSON (`dataframe_split`) over HTTP, one request at a time.

In-process calls run on a worker thread, as the server runs `predict` (FastAPI's
`asyncio.to_thread`), so that both run the network under the same threading: on a machine whose
cores other jobs share, torch's OpenMP threads called from the main thread can take several
times as long (the last column, measured too). Each figure is the median of the timed calls
after a warm-up call; the sides take turns. A **large** call holds several photos of 640 x 480
(4:3), a **small** call one 64 x 64 photo, which costs the network almost nothing, so its
served time is mostly the fixed cost of a request.
The served path adds, per request, two parts, measured apart: MLflow's handler (the scoring
server's `invocations`: the JSON body parsed into a DataFrame, its schema checked, the answer
written as JSON), timed by calling it in this process (**handler**); and the HTTP exchange over
loopback (the client's JSON encoding and decoding, uvicorn, two processes scheduled on the same
cores), the served time less the handler's. Decoding, the network and the PNG masks are the
same code on both sides.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=64, help="base channels (64: default)")
    parser.add_argument("--image-size", type=int, default=256, help="the network's input side")
    parser.add_argument("--photos", type=int, default=8, help="photos per large call")
    parser.add_argument("--photo-side", type=int, default=640, help="width of a 4:3 photo")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per figure (>= 3)")


def jpegs(count: int, width: int, height: int) -> list[str]:
    """`count` base64 JPEGs (quality 90) of photo-like pixels, as a client sends them."""
    texts = []
    for pixels in check_photos(count, height, width):
        buffer = io.BytesIO()
        Image.fromarray(pixels.transpose(1, 2, 0)).save(buffer, format="JPEG", quality=90)
        texts.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return texts


def log_model(folder: Path, width: int, image_size: int) -> tuple[str, str]:
    """Log the Segmenter for a random U-Net into a SQLite store in `folder`: (store, model URI)."""
    tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    experiment = MlflowClient().create_experiment("serving", (folder / "mlruns").as_uri())
    torch.manual_seed(0)
    net = UNet(NetworkConfig(base_channels=width, depth=4, batch_norm=True))
    example = check_photos(1, 64, 64)[0].transpose(1, 2, 0)
    with mlflow.start_run(experiment_id=experiment):
        return tracking_uri, log_segmentation_model(net, image_size, example).model_uri


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def payload_of(photos: list[str]) -> dict:
    """The request body `mlflow models serve` takes for a DataFrame of one column."""
    return {"dataframe_split": {"columns": [INPUT_COLUMN], "data": [[photo] for photo in photos]}}


def measure_call(
    photos: list[str], url: str, predictor, worker: ThreadPoolExecutor, repeats: int
) -> dict:
    """One call's figures: each side's median seconds and masks/s, and the served overhead
    beside the client's own JSON work and the payload's size."""
    frame, payload = pd.DataFrame({INPUT_COLUMN: photos}), payload_of(photos)
    body, schema = json.dumps(payload), predictor.metadata.get_input_schema()

    def served() -> None:
        answer = requests.post(f"{url}/invocations", json=payload, timeout=600)
        answer.raise_for_status()
        answer.json()

    sides = {
        # On a worker thread, as the server runs predict (asyncio.to_thread).
        "in_process": lambda: worker.submit(predictor.predict, frame).result(),
        # The server's own handler, in this process: body text in, JSON answer out.
        "handler": lambda: worker.submit(
            invocations, body, CONTENT_TYPE_JSON, predictor, schema
        ).result(),
        "served": served,
        "in_process_main_thread": lambda: predictor.predict(frame),
    }
    for call in sides.values():
        call()  # warm-up: first-call allocations and kernel choices
    seconds: dict[str, list[float]] = {name: [] for name in SIDES}
    for repeat in range(repeats):
        for name in SIDES if repeat % 2 == 0 else reversed(SIDES):
            seconds[name].append(timed(sides[name]))
    masks = predictor.predict(frame)[OUTPUT_COLUMN].tolist()
    reply = json.dumps({"predictions": [{OUTPUT_COLUMN: mask} for mask in masks]})
    client_json = [timed(lambda: (json.dumps(payload), json.loads(reply))) for _ in range(repeats)]
    median_s = {name: median(seconds[name], 4) for name in SIDES}
    return {
        "photos": len(photos),
        "seconds": median_s,
        "masks_per_s": {name: round(len(photos) / median_s[name], 2) for name in SIDES},
        "overhead_ms": round((median_s["served"] - median_s["in_process"]) * 1000, 1),
        "handler_ms": round((median_s["handler"] - median_s["in_process"]) * 1000, 1),
        "http_ms": round((median_s["served"] - median_s["handler"]) * 1000, 1),
        "client_json_ms": round(median(client_json, 5) * 1000, 1),
        "request_mb": round(len(body) / MB, 3),
        "answer_mb": round(len(reply) / MB, 3),
        "repeats_s": {name: [round(s, 4) for s in seconds[name]] for name in SIDES},
    }


def run(options: argparse.Namespace) -> dict:
    check_repeats(options.repeats)
    folder = options.workspace.folder / "serving"
    folder.mkdir()
    tracking_uri, model_uri = log_model(folder, options.width, options.image_size)
    side = options.photo_side
    calls = {"large": jpegs(options.photos, side, side * 3 // 4), "small": jpegs(1, 64, 64)}
    predictor = load_predictor(model_uri)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        *(str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"),
        *("-h", "127.0.0.1", "-p", str(port), "--workers", "1"),
    ]
    env, log = mlflow_environment(tracking_uri), folder / "serve.log"
    before = load_average()
    with server(argv, env, log, http_ok(f"{url}/ping")), ThreadPoolExecutor(1) as worker:
        by_call = {
            call: measure_call(photos, url, predictor, worker, options.repeats)
            for call, photos in calls.items()
        }
    rates = by_call["large"]["masks_per_s"]
    figures = {
        "ratio": round(rates["served"] / rates["in_process"], 3),
        "target": None,
        "met": None,
        "masks_per_s": rates,
        "network": {"base_channels": options.width, "depth": 4, "image_size": options.image_size},
        "photo_size": [side, side * 3 // 4],
        "calls": by_call,
        "threads": torch.get_num_threads(),
        "repeats": options.repeats,
        "mlflow": mlflow.__version__,
        "load_average": {"before": before, "after": load_average()},
    }
    print(table(figures))
    return figures


def headline(figures: dict) -> Headline:
    rates, large = figures["masks_per_s"], figures["calls"]["large"]
    return Headline(
        figures=(
            f"{rates['served']:.2f} served vs {rates['in_process']:.2f} in-process masks/s "
            f"({large['photos']} photos a call; +{large['overhead_ms']:.0f} ms a call)"
        ),
        ratio_text=f"{figures['ratio']:.3f}x",
        target=TARGET_TEXT,
        met=None,
    )


def table(figures: dict) -> str:
    width, height = figures["photo_size"]
    names = {"large": f"{width} x {height} JPEGs", "small": "64 x 64 JPEG"}
    header = [
        "call", "in-process s", "served s", "served overhead ms", "of which MLflow's handler ms",
        "of which HTTP ms", "request MB", "in-process masks/s", "served masks/s",
        "served / in-process", "in-process, main thread, s",
    ]  # fmt: skip
    rows = []
    for call, row in figures["calls"].items():
        rates, seconds = row["masks_per_s"], row["seconds"]
        rows.append(
            [
                f"{row['photos']} x {names[call]}",
                f"{seconds['in_process']:.3f}",
                f"{seconds['served']:.3f}",
                f"{row['overhead_ms']:.1f}",
                f"{row['handler_ms']:.1f}",
                f"{row['http_ms']:.1f}",
                f"{row['request_mb']:.3f}",
                f"{rates['in_process']:.2f}",
                f"{rates['served']:.2f}",
                f"{rates['served'] / rates['in_process']:.3f}",
                f"{seconds['in_process_main_thread']:.3f}",
            ]
        )
    return markdown_table(header, rows)


def explained(figures: dict) -> str:
    """What the served overhead is made of, in this run's figures."""
    small, large = figures["calls"]["small"], figures["calls"]["large"]
    share = large["overhead_ms"] / (large["seconds"]["served"] * 1000)
    main_thread = large["seconds"]["in_process_main_thread"] / large["seconds"]["in_process"]
    return (
        f"Served, a call of {large['photos']} photos took {large['overhead_ms']:.0f} ms more "
        f"than in-process ({share:.0%} of its time; ratio {figures['ratio']:.3f}). Of that, "
        f"MLflow's handler (parsing {large['request_mb']:.2f} MB of JSON into a DataFrame, the "
        f"schema check, the {large['answer_mb']:.2f} MB JSON answer) took "
        f"{large['handler_ms']:.0f} ms run in this process, and the rest, "
        f"{large['http_ms']:.0f} ms, is the HTTP exchange over loopback: uvicorn reading the "
        f"body, the client's JSON work ({large['client_json_ms']:.0f} ms measured) and the "
        f"scheduling of two processes on shared cores. The fixed cost of a request, seen on "
        f"the one small photo, is about {small['overhead_ms']:.0f} ms. Called from the main "
        f"thread instead of a worker thread, the same in-process call took "
        f"{main_thread:.2f}x as long."
    )


def section(results: dict[str, dict]) -> str:
    return machine_sections(
        TITLE,
        EXPLANATION,
        results,
        lambda figures: (
            f"U-Net of {figures['network']['base_channels']} channels, depth "
            f"{figures['network']['depth']}, {figures['network']['image_size']} px input; MLflow "
            f"{figures['mlflow']}, {figures['threads']} torch threads in each process; each "
            f"figure the median of {figures['repeats']} calls.\n\n{table(figures)}\n\n"
            f"{explained(figures)}"
        ),
    )
