"""Masks for a folder of photos, through the logged model's own predict: what serving runs.

Each photo gives `masks/<name>.png` (L, 0 or 255, at the photo's upright size, exactly the
PNG the model returns) and `overlays/<name>.jpg`; `predictions.csv` lists every file, with the
reason a file was skipped. A bad file never stops the rest, and neither does a photo over the
pixel limit (the model's own, UNET_PERSON_MAX_PIXELS): it is refused from its header, unread.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import mlflow
import pandas as pd
from PIL import Image

from pipeline.console import log, progress
from pipeline.errors import PipelineError
from pipeline.images import (
    ImageError,
    TooManyPixels,
    decode_mask,
    overlay,
    upright_photo,
)
from pipeline.locations import Folder, Listed, Location
from pipeline.serving.segmenter import (
    FLIP_TTA,
    INPUT_COLUMN,
    MAX_PIXELS_VARIABLE,
    OUTPUT_COLUMN,
    THRESHOLD,
)

MASKS = "masks"
OVERLAYS = "overlays"
TABLE = "predictions.csv"
COLUMNS = ("file", "status", "reason", "width", "height", "foreground_fraction", "mask", "overlay")
PREDICTED = "predicted"
SKIPPED = "skipped"
OVERLAY_QUALITY = 90


@dataclass
class FolderReport:
    table: Path
    rows: list[dict] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(row["status"] == status for row in self.rows)


def planned(source: Location, target: Location, roles: tuple[str, str]) -> list[Listed]:
    """Every file of `source` to mask into `target`, in a stable order, each refused with its
    reason where it must not be read (a symlink out) or would overwrite another's mask (two
    files with the same name before their suffix: the first in order keeps it)."""
    source_role, target_role = roles
    if source.inside(target) and target.inside(source):
        raise PipelineError(
            f"{target_role}={target.uri} is {source_role}: write the masks somewhere else"
        )
    found = source.listing(source_role, leave_out=target)
    if not found:
        raise PipelineError(
            f"{source_role}={source.uri} holds no files: put the photos to mask there"
        )
    claimed: dict[PurePosixPath, str] = {}
    plan = []
    for listed in found:
        stem = PurePosixPath(listed.name).with_suffix("")
        if not listed.refused and stem in claimed:
            listed = replace(
                listed, refused=f"{claimed[stem]} has the same name before its suffix: rename one"
            )
        elif not listed.refused:
            claimed[stem] = listed.name
        plan.append(listed)
    return plan


def checked_photo(data: bytes, max_pixels: int) -> Image.Image:
    """The photo the model will mask, or ImageError saying why it will not."""
    try:
        return upright_photo(data, max_pixels)
    except TooManyPixels as error:
        raise TooManyPixels(f"{error}; {MAX_PIXELS_VARIABLE} raises the limit") from None


def skipped_row(name: str, reason: str) -> dict:
    return dict.fromkeys(COLUMNS, "") | {"file": name, "status": SKIPPED, "reason": reason}


def predicted_row(
    name: str, size: tuple[int, int], png: bytes, photo: Image.Image | None = None
) -> tuple[dict, dict[str, bytes]]:
    """A predicted photo's row and its files (name under the output: bytes): the model's PNG
    mask as it came, and the overlay on `photo` when one is given."""
    stem = PurePosixPath(name).with_suffix("")
    mask = decode_mask(png)
    mask_name = f"{MASKS}/{stem}.png"
    files = {mask_name: png}
    overlay_name = ""
    if photo is not None:
        buffer = io.BytesIO()
        overlay(photo, mask).save(buffer, format="JPEG", quality=OVERLAY_QUALITY)
        overlay_name = f"{OVERLAYS}/{stem}.jpg"
        files[overlay_name] = buffer.getvalue()
    width, height = size
    row = dict.fromkeys(COLUMNS, "") | {
        "file": name,
        "status": PREDICTED,
        "width": width,
        "height": height,
        "foreground_fraction": round(float(mask.mean()), 6),
        "mask": mask_name,
        "overlay": overlay_name,
    }
    return row, files


def predict_folder(
    model: mlflow.pyfunc.PyFuncModel,
    input_dir: Path,
    output_dir: Path,
    threshold: float,
    max_pixels: int,
    tta: bool = False,
) -> FolderReport:
    """Masks and overlays for every file; `max_pixels` is the model's limit, so a photo the
    model would refuse is skipped with the reason instead."""
    source, target = Folder(input_dir), Folder(output_dir)
    plan = planned(source, target, ("input_dir", "output_dir"))
    report = FolderReport(output_dir / TABLE)
    for listed in progress(plan, desc="predict", unit="photo"):
        try:
            if listed.refused:
                raise ImageError(listed.refused)
            data = source.read(listed.name)
            photo = checked_photo(data, max_pixels)
        except (ImageError, OSError) as error:
            report.rows.append(skipped_row(listed.name, str(error)))
            log.warning("skipped %s: %s", listed.name, error)
            continue
        answer = model.predict(
            pd.DataFrame({INPUT_COLUMN: [base64.b64encode(data).decode("ascii")]}),
            params={THRESHOLD: threshold, FLIP_TTA: tta},
        )
        png = base64.b64decode(answer[OUTPUT_COLUMN].iloc[0])
        row, files = predicted_row(listed.name, photo.size, png, photo)
        for name, content in files.items():
            target.write(name, content)
        report.rows.append(row)
    output_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(report.rows, columns=list(COLUMNS)).to_csv(report.table, index=False)
    return report
