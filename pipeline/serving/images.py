"""Photos in, masks out: the one copy of the picture transforms around the network.

Preprocess, the logged model (and so `predict`, `mlflow models serve` and `evaluate`) all go
through these functions, so a photo becomes the same pixels for training as for serving.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PERSON_TINT = np.array([40, 200, 40], dtype=np.float32)
TINT_ALPHA = 0.45


class ImageError(ValueError):
    """Bytes that are not a usable image; the message says why."""


def upright_photo(data: bytes) -> Image.Image:
    """Encoded bytes as an upright RGB image, at the size a viewer shows it.

    EXIF orientation is applied as preprocess applies it, because phones store pixels rotated
    and people (and the dataset's masks) see the photo upright.
    """
    try:
        with Image.open(io.BytesIO(data)) as handle:
            handle.load()
            upright = ImageOps.exif_transpose(handle)
    except UnidentifiedImageError as error:
        raise ImageError("not an image (Pillow knows no image format for these bytes)") from error
    except Image.DecompressionBombError as error:
        raise ImageError(f"too large an image ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"an unreadable image ({type(error).__name__}: {error})") from error
    return upright.convert("RGB")


def square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Any image as the size x size x 3 uint8 pixels the network sees (bilinear, as in training)."""
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def encode_png(pixels: np.ndarray) -> bytes:
    """An (H, W) or (H, W, 3) uint8 array as PNG bytes (lossless, so masks survive exactly)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    """A mask PNG as an (H, W) bool array: True where the person is."""
    with Image.open(io.BytesIO(data)) as handle:
        return np.asarray(handle.convert("L")) > 127


def tint(pixels: np.ndarray, regions: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(H, W, 3) uint8 pixels with each boolean region blended towards its colour."""
    tinted = pixels.astype(np.float32)
    for region, colour in regions:
        tinted[region] = (1 - TINT_ALPHA) * tinted[region] + TINT_ALPHA * colour
    return tinted.round().astype(np.uint8)


def overlay(photo: Image.Image, mask: np.ndarray) -> Image.Image:
    """The photo with the person tinted green, to check a mask at a glance."""
    return Image.fromarray(tint(np.asarray(photo.convert("RGB")), [(mask, PERSON_TINT)]))
