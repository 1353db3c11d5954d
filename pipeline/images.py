"""Photos in, masks out: the one copy of the picture transforms around the network.

Preprocess, the logged model (and so `predict`, `mlflow models serve` and `evaluate`) all go
through these functions, so a photo becomes the same pixels for training as for serving.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PERSON_TINT = np.array([40, 200, 40], dtype=np.float32)
TINT_ALPHA = 0.45
# Pixels worked on at a time where a photo-sized float array would be the cost otherwise.
BAND_PIXELS = 1 << 18


# Photos above this are refused before decoding: 64 MP admits 48 MP phone photos (8064 x 6048)
# and stays below Pillow's own warning at ~89 MP; one costs ~200 MB as RGB.
DEFAULT_MAX_PIXELS = 64_000_000


class ImageError(ValueError):
    """Bytes that are not a usable image; the message says why."""


class TooManyPixels(ImageError):
    """An image over the pixel limit: the one image error that a higher limit would cure."""


def open_image(source: bytes | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An image file or its bytes, decoded and upright, in its own mode.

    The pixel count is checked from the header before anything is decoded: a 100 KB PNG can
    claim 30000 x 30000 pixels and decode to gigabytes. EXIF orientation is applied in place,
    because phones store pixels rotated and people (and the dataset's masks) see the photo
    upright, and a copy would double the memory a large photo takes.
    """
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except UnidentifiedImageError as error:
        raise ImageError("not an image (Pillow knows no image format for these bytes)") from error
    except Image.DecompressionBombError as error:  # over Pillow's own limit, before ours
        raise TooManyPixels(f"too many pixels: {error} (max_pixels={max_pixels})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"an unreadable image ({type(error).__name__}: {error})") from error
    try:
        width, height = image.size
        if width * height > max_pixels:
            raise TooManyPixels(too_many_pixels(width, height, max_pixels))
        image.load()  # also closes a file Pillow opened itself
        ImageOps.exif_transpose(image, in_place=True)
    except (OSError, SyntaxError, ValueError) as error:
        image.close()
        if isinstance(error, ImageError):
            raise
        raise ImageError(f"an unreadable image ({type(error).__name__}: {error})") from error
    return image


def too_many_pixels(width: int, height: int, max_pixels: int) -> str:
    return (
        f"{width}x{height} pixels ({width * height / 1e6:.1f} megapixels), over the limit of "
        f"max_pixels={max_pixels} ({max_pixels / 1e6:g} megapixels)"
    )


def upright_photo(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Encoded bytes as an upright RGB image, at the size a viewer shows it."""
    image = open_image(data, max_pixels)
    return image if image.mode == "RGB" else image.convert("RGB")


def square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Any image as the size x size x 3 uint8 pixels the network sees (bilinear, as in training);
    an RGB photo is resized as it is, without a converted copy at its full size."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR))


def encode_png(pixels: np.ndarray) -> bytes:
    """An (H, W) or (H, W, 3) uint8 array as PNG bytes (lossless, so masks survive exactly)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
    """A mask PNG as an (H, W) bool array: True where the person is."""
    with Image.open(io.BytesIO(data)) as handle:
        grey = handle if handle.mode == "L" else handle.convert("L")
        return np.asarray(grey) > 127


def tint(pixels: np.ndarray, regions: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(H, W, 3) uint8 pixels with each boolean region (the regions disjoint) blended towards
    its colour. Only the regions' pixels go through float32, not a float copy of the whole."""
    tinted = pixels.copy()
    for region, colour in regions:
        blended = (1 - TINT_ALPHA) * tinted[region].astype(np.float32) + TINT_ALPHA * colour
        tinted[region] = blended.round().astype(np.uint8)
    return tinted


def overlay(photo: Image.Image, mask: np.ndarray) -> Image.Image:
    """The photo with the person tinted green, to check a mask at a glance.

    Tinted band by band into one copy of the photo, so a 48 MP photo costs that copy and a few
    MB, not float copies of itself.
    """
    tinted = photo.convert("RGB")  # a new image even when the photo is RGB already
    band_rows = max(1, BAND_PIXELS // tinted.width)
    for top in range(0, tinted.height, band_rows):
        box = (0, top, tinted.width, min(top + band_rows, tinted.height))
        band = tint(np.asarray(tinted.crop(box)), [(mask[top : box[3]], PERSON_TINT)])
        tinted.paste(Image.fromarray(band), box)
    return tinted
