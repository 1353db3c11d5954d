"""The try-it page's web app: one HTML page and two JSON endpoints in front of the logged model.

A Starlette app, served by uvicorn: both come with MLflow (its scoring server is FastAPI on
Starlette), so the page adds no dependency. Photos arrive as the raw bytes of the file (no
multipart form, which would need python-multipart) and go through the model's own `predict`,
as `predict` sends them, so the page's mask PNG is byte for byte the one `predict` writes.

A photo's size is the visitor's choice, so the page holds the same limit as the model
(UNET_PERSON_MAX_PIXELS, checked from the header) and works on one photo at a time.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from pipeline.demo.model_card import ModelCard
from pipeline.images import (
    ImageError,
    TooManyPixels,
    decode_mask,
    overlay,
    upright_photo,
)
from pipeline.serving.segmenter import INPUT_COLUMN, MAX_PIXELS_VARIABLE, OUTPUT_COLUMN, THRESHOLD

PAGE = Path(__file__).with_name("static") / "index.html"
# Photo and overlay are shown at most this wide or high (JPEG); the mask comes at full size,
# since it is what a visitor downloads.
PREVIEW_SIDE = 1024
PREVIEW_QUALITY = 85
# No photo under the pixel limit is a larger file than this many bytes a pixel (uncompressed
# 16-bit RGBA): a larger upload is refused while it arrives, before it fills the memory.
BYTES_PER_PIXEL_CAP = 8
HEADROOM_BYTES = 1 << 20


class Refused(Exception):
    """An upload the page answers with `status` and a message for the visitor."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Answer:
    mask_png: bytes
    photo_jpeg: bytes
    overlay_jpeg: bytes
    width: int
    height: int
    foreground_share: float
    seconds: float

    def as_json(self, threshold: float) -> dict:
        return {
            "mask": base64.b64encode(self.mask_png).decode("ascii"),
            "photo": base64.b64encode(self.photo_jpeg).decode("ascii"),
            "overlay": base64.b64encode(self.overlay_jpeg).decode("ascii"),
            "width": self.width,
            "height": self.height,
            "foreground_share": self.foreground_share,
            "seconds": self.seconds,
            "threshold": threshold,
        }


def preview(image: Image.Image) -> bytes:
    """The image as a JPEG no wider or higher than PREVIEW_SIDE, for showing on the page."""
    scale = min(1.0, PREVIEW_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=PREVIEW_QUALITY)
    return buffer.getvalue()


class DemoModel:
    """The loaded model behind the page, asked one photo at a time.

    One at a time because the network already uses every core, and two large photos at once
    would double the memory the pixel limit is sized for.
    """

    def __init__(self, model: mlflow.pyfunc.PyFuncModel, max_pixels: int) -> None:
        self.model = model
        self.max_pixels = max_pixels
        self.max_upload_bytes = BYTES_PER_PIXEL_CAP * max_pixels + HEADROOM_BYTES
        self._lock = threading.Lock()

    def segment(self, data: bytes, threshold: float) -> Answer:
        """The mask of a photo file's bytes, as predict makes it, with previews to show."""
        with self._lock:
            started = time.perf_counter()
            photo = self._photo(data)
            try:
                answer = self.model.predict(
                    pd.DataFrame({INPUT_COLUMN: [base64.b64encode(data).decode("ascii")]}),
                    params={THRESHOLD: threshold},
                )
            except MlflowException as error:
                raise Refused(400, error.message) from None
            mask_png = base64.b64decode(answer[OUTPUT_COLUMN].iloc[0])
            seconds = time.perf_counter() - started
            mask = decode_mask(mask_png)
            return Answer(
                mask_png=mask_png,
                photo_jpeg=preview(photo),
                overlay_jpeg=preview(overlay(photo, mask)),
                width=photo.width,
                height=photo.height,
                foreground_share=float(mask.mean()),
                seconds=seconds,
            )

    def _photo(self, data: bytes) -> Image.Image:
        """The upright photo, or a message saying what is wrong with the file."""
        try:
            return upright_photo(data, self.max_pixels)
        except TooManyPixels as error:
            raise Refused(
                413,
                f"This photo is {error}. Pick a smaller photo, or start the demo with "
                f"{MAX_PIXELS_VARIABLE} set higher.",
            ) from None
        except ImageError as error:
            raise Refused(400, f"This file is {error}. Pick a PNG, JPEG or other photo.") from None


def threshold_of(request: Request, default: float) -> float:
    text = request.query_params.get(THRESHOLD, "")
    try:
        threshold = float(text) if text else default
    except ValueError:
        threshold = -1.0
    if not 0 < threshold < 1:
        raise Refused(400, f"threshold={text} must be a number between 0 and 1 (exclusive).")
    return threshold


async def upload(request: Request, limit: int) -> bytes:
    """The request's body, refused as soon as it grows past `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, too_large(int(declared), limit))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, too_large(size, limit))
        chunks.append(chunk)
    if not size:
        raise Refused(400, "No file came with the request: pick or drop a photo.")
    return b"".join(chunks)


def too_large(size: int, limit: int) -> str:
    return (
        f"This file is over {size / 1e6:.0f} MB, larger than any photo under the pixel limit "
        f"({limit / 1e6:.0f} MB at most). Pick a smaller photo."
    )


def demo_app(model: DemoModel, card: ModelCard, threshold: float) -> Starlette:
    """The page at `/`, what it shows about the model at `/api/model`, and the masks at
    `/api/segment?threshold=<p>` (POST the photo file's bytes). Every refusal is JSON
    `{"error": message}`: 400 for what is not a usable photo, 413 for what is too large."""
    page = PAGE.read_text(encoding="utf-8")

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def about(request: Request) -> JSONResponse:
        return JSONResponse(
            {"model": card.as_json(), "threshold": threshold, "max_pixels": model.max_pixels}
        )

    async def segment(request: Request) -> JSONResponse:
        try:
            chosen = threshold_of(request, threshold)
            data = await upload(request, model.max_upload_bytes)
            answer = await run_in_threadpool(model.segment, data, chosen)
        except Refused as refusal:
            return JSONResponse({"error": str(refusal)}, status_code=refusal.status)
        return JSONResponse(answer.as_json(chosen))

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/model", about),
            Route("/api/segment", segment, methods=["POST"]),
        ]
    )
