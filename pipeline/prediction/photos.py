"""Masks for a folder of photos, through the logged model's own predict: what serving runs.

Each photo gives `masks/<name>.png` (L, 0 or 255, at the photo's upright size, exactly the
PNG the model returns) and `overlays/<name>.jpg`; `predictions.csv` lists every file, with the
reason a file was skipped. A bad file never stops the rest, and neither does a photo over the
pixel limit (the model's own, UNET_PERSON_MAX_PIXELS): it is refused from its header, unread.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd

from pipeline.console import log, progress
from pipeline.errors import PipelineError
from pipeline.images import (
    ImageError,
    TooManyPixels,
    decode_mask,
    overlay,
    upright_photo,
)
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


def photo_files(input_dir: Path, output_dir: Path) -> list[Path]:
    """Every file under input_dir but hidden ones and earlier output, in a stable order."""
    if not input_dir.is_dir():
        raise PipelineError(f"input_dir={input_dir} is not a folder: pass the folder of photos")
    output = output_dir.resolve()
    if output == input_dir.resolve():
        raise PipelineError(
            f"output_dir={output_dir} is input_dir: write the masks to another folder"
        )
    files = sorted(
        path
        for path in input_dir.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(input_dir).parts)
        and not path.resolve().is_relative_to(output)
    )
    if not files:
        raise PipelineError(f"input_dir={input_dir} holds no files: put the photos to mask there")
    return files


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
    files = photo_files(input_dir, output_dir)
    report = FolderReport(output_dir / TABLE)
    claimed: dict[Path, Path] = {}
    for path in progress(files, desc="predict", unit="photo"):
        name = path.relative_to(input_dir)
        row = dict.fromkeys(COLUMNS, "") | {"file": str(name), "status": SKIPPED}
        report.rows.append(row)
        stem = name.with_suffix("")
        if stem in claimed:
            row["reason"] = f"{claimed[stem]} has the same name before its suffix: rename one"
            log.warning("skipped %s: %s", name, row["reason"])
            continue
        try:
            data = path.read_bytes()
            photo = upright_photo(data, max_pixels)
        except (ImageError, OSError) as error:
            row["reason"] = str(error)
            if isinstance(error, TooManyPixels):
                row["reason"] += f"; {MAX_PIXELS_VARIABLE} raises the limit"
            log.warning("skipped %s: %s", name, row["reason"])
            continue
        claimed[stem] = name
        answer = model.predict(
            pd.DataFrame({INPUT_COLUMN: [base64.b64encode(data).decode("ascii")]}),
            params={THRESHOLD: threshold, FLIP_TTA: tta},
        )
        png = base64.b64decode(answer[OUTPUT_COLUMN].iloc[0])
        mask_path = output_dir / MASKS / stem.with_suffix(".png")
        overlay_path = output_dir / OVERLAYS / stem.with_suffix(".jpg")
        for folder in (mask_path.parent, overlay_path.parent):
            folder.mkdir(parents=True, exist_ok=True)
        mask_path.write_bytes(png)
        mask = decode_mask(png)
        overlay(photo, mask).save(overlay_path, quality=OVERLAY_QUALITY)
        row |= {
            "status": PREDICTED,
            "width": photo.width,
            "height": photo.height,
            "foreground_fraction": round(float(mask.mean()), 6),
            "mask": str(mask_path.relative_to(output_dir)),
            "overlay": str(overlay_path.relative_to(output_dir)),
        }
    output_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(report.rows, columns=list(COLUMNS)).to_csv(report.table, index=False)
    return report
