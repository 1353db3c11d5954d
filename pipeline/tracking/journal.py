"""A training run's metrics and images, kept on local disk first and delivered from there.

Two promises rest on this journal:
- A tracking outage of any length does not stop training. Entries wait on disk, and a
  background thread delivers them, in order, once the server answers again.
- A run killed at any moment and resumed from its last checkpoint logs nothing twice.
  - Only entries up to the step of the last saved checkpoint are released for delivery.
  - Entries past it are dropped when training resumes from that checkpoint, which logs them
    again.
  - A (key, step) already recorded is never recorded a second time.

Sending an entry twice (after a crash between delivery and bookkeeping) is harmless:
- the SQL stores ignore a metric row identical to one they hold (same key, value, step and
  timestamp);
- images go to fixed file names.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.multimedia import compress_image_size
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES
from PIL import Image

from pipeline import disk
from pipeline.errors import first_line

log = logging.getLogger("unet_person")

ENTRIES_FILE = "journal.jsonl"
STATE_FILE = "journal-state.json"
IMAGES_FOLDER = "images"  # the run's artifact folder MLflow's UI reads stepped images from
BATCH_SIZE = 500  # MLflow takes up to 1000 metrics per log_batch
FIRST_RETRY_SECONDS = 1.0
LONGEST_RETRY_SECONDS = 30.0
EVERYTHING = math.inf  # JSON has no infinity: stored as null
NOTHING = -1  # before the first checkpoint no step is safe to show
METRIC_KEY_FORBIDDEN = re.compile(r"[^a-zA-Z0-9_/. -]+")
# The journal lives in the run's checkpoint folder (training/fit.py).
FREE_SPACE_ADVICE = "free space there, or give --checkpoint_dir on another disk"


def stepped_image_files(key: str, step: int, timestamp: int) -> list[str]:
    """The names MLflow's `log_image(key=..., step=...)` gives an image and its preview in the
    run's images/ folder, by which its UI shows a key's images as a stepped series. Kept here
    because the journal delivers a file it saved earlier, under a name fixed when it was
    recorded (log_image would name a resent image anew); tests/tracking/test_journal.py holds
    these to the names log_image writes, so an MLflow that names them otherwise fails there."""
    stem = f"{key.replace('/', '~')}+step+{step}+timestamp+{timestamp}+{uuid.uuid4()}"
    return [f"{stem}.png", f"{stem}+compressed.webp"]


def is_lasting_refusal(error: Exception) -> bool:
    """A 4xx answer (but 429, "slow down") is the store refusing the entry, not being away:
    sending it again cannot help."""
    if not isinstance(error, MlflowException):
        return False
    status = error.get_http_status_code()
    return 400 <= status < 500 and status != 429


class Journal:
    """Entries recorded by training, delivered to run `run_id` by a background thread.

    `position` orders entries against checkpoints: the training step an entry belongs to.
    """

    def __init__(self, folder: Path, run_id: str, client: MlflowClient) -> None:
        self.folder = folder
        self.run_id = run_id
        self.client = client
        folder.mkdir(parents=True, exist_ok=True)
        (folder / IMAGES_FOLDER).mkdir(exist_ok=True)
        self._entries = _read_entries(folder / ENTRIES_FILE)
        state = _read_state(folder / STATE_FILE)
        self._delivered = min(state.get("delivered", 0), len(self._entries))
        released = state.get("released", NOTHING)
        self._released = EVERYTHING if released is None else released
        self._seen = {(entry["key"], entry["step"]) for entry in self._entries}
        self._refused = 0
        self._condition = threading.Condition()
        self._closing = False
        self._sink = _open_for_appending(folder / ENTRIES_FILE)
        self._thread = threading.Thread(target=self._deliver_forever, name="journal", daemon=True)
        self._thread.start()

    # --- the training side -------------------------------------------------------------

    def record_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Keep metrics for delivery, each (key, step) once; timestamps are taken now."""
        timestamp = int(time.time() * 1000)
        entries = [
            {"kind": "metric", "key": key, "value": float(value), "step": step}
            | {"position": step, "timestamp": timestamp}
            for key, value in ((METRIC_KEY_FORBIDDEN.sub("", k), v) for k, v in metrics.items())
        ]
        self._append(entries)

    def record_image(self, key: str, image: Image.Image, step: int, position: int) -> None:
        """Keep an image as MLflow's `log_image(key=..., step=...)` names it, so the UI shows
        the images of one key as a stepped series."""
        files = stepped_image_files(key, step, int(time.time() * 1000))
        try:
            with disk.space_for(self.folder, f"image {key}", None, FREE_SPACE_ADVICE):
                image.save(self.folder / IMAGES_FOLDER / files[0])
                compress_image_size(image).save(self.folder / IMAGES_FOLDER / files[1])
        except BaseException:
            for name in files:
                (self.folder / IMAGES_FOLDER / name).unlink(missing_ok=True)
            raise
        self._append(
            [{"kind": "image", "key": key, "step": step, "position": position, "files": files}]
        )

    def release(self, position: float) -> None:
        """Let entries up to `position` be delivered (a checkpoint holding them is on disk)."""
        with self._condition:
            self._released = max(self._released, position)
            os.fsync(self._sink)  # on disk before it counts: a reboot keeps it too
            with disk.space_for(self.folder, "the journal's state", None, FREE_SPACE_ADVICE):
                self._save_state()
            self._condition.notify_all()

    def rewind(self, position: int) -> None:
        """Forget undelivered entries past `position`: training resumes from a checkpoint taken
        there and will log them again. Also closes the release to that checkpoint."""
        with self._condition:
            kept = self._entries[: self._delivered] + [
                entry for entry in self._entries[self._delivered :] if entry["position"] <= position
            ]
            dropped = len(self._entries) - len(kept)
            for entry in self._entries[self._delivered :]:
                if entry["position"] > position and entry["kind"] == "image":
                    for name in entry["files"]:
                        (self.folder / IMAGES_FOLDER / name).unlink(missing_ok=True)
            self._entries = kept
            self._seen = {(entry["key"], entry["step"]) for entry in kept}
            self._released = position
            os.close(self._sink)
            _write_entries(self.folder / ENTRIES_FILE, kept)
            self._sink = _open_for_appending(self.folder / ENTRIES_FILE)
            self._save_state()
        if dropped:
            log.info(
                "journal: dropped %d entries past the checkpoint at step %d", dropped, position
            )

    def close(self, drain: bool = True) -> None:
        """Stop delivering. With `drain`, first release everything and wait until it is
        delivered, for as long as the store is away; without, what is left waits on disk."""
        if drain:
            self.release(EVERYTHING)
        with self._condition:
            if drain and not self._condition.wait_for(self._all_delivered, timeout=5):
                log.warning(
                    "journal: waiting for the tracking store to take %d entries kept in %s",
                    len(self._entries) - self._delivered,
                    self.folder,
                )
                self._condition.wait_for(self._all_delivered)
            self._closing = True
            os.close(self._sink)
            self._condition.notify_all()
        if drain:
            self._thread.join()
        if self._refused:
            log.error("journal: the tracking store refused %d entries (see above)", self._refused)

    def _all_delivered(self) -> bool:
        return self._delivered == len(self._entries)

    @property
    def pending(self) -> int:
        with self._condition:
            return len(self._entries) - self._delivered

    def _append(self, entries: list[dict[str, Any]]) -> None:
        with self._condition:
            fresh = [entry for entry in entries if (entry["key"], entry["step"]) not in self._seen]
            self._write("".join(json.dumps(entry) + "\n" for entry in fresh).encode())
            self._seen.update((entry["key"], entry["step"]) for entry in fresh)
            self._entries.extend(fresh)
            self._condition.notify_all()

    def _write(self, data: bytes) -> None:
        """Append whole lines or none, straight to the file (in the page cache at once: a killed
        process loses nothing); on a full disk the file is cut back to where it was."""
        end = os.lseek(self._sink, 0, os.SEEK_END)
        try:
            with disk.space_for(self.folder, "the metric journal", len(data), FREE_SPACE_ADVICE):
                unwritten = memoryview(data)
                while unwritten:
                    unwritten = unwritten[os.write(self._sink, unwritten) :]
        except BaseException:
            os.ftruncate(self._sink, end)
            raise

    def _save_state(self) -> None:
        released = None if self._released == EVERYTHING else self._released
        temporary = self.folder / (STATE_FILE + ".tmp")
        temporary.write_text(json.dumps({"delivered": self._delivered, "released": released}))
        temporary.replace(self.folder / STATE_FILE)

    # --- the delivery side -------------------------------------------------------------

    def _deliverable(self) -> list[dict[str, Any]]:
        """The next entries in order that are released, as one batch of one kind."""
        batch: list[dict[str, Any]] = []
        for entry in self._entries[self._delivered :]:
            if entry["position"] > self._released:
                break
            if batch and (entry["kind"] != batch[0]["kind"] or len(batch) == BATCH_SIZE):
                break
            batch.append(entry)
            if entry["kind"] == "image":
                break
        return batch

    def _deliver_forever(self) -> None:
        wait = FIRST_RETRY_SECONDS
        outage_since: float | None = None
        while True:
            with self._condition:
                while not self._closing and not (batch := self._deliverable()):
                    self._condition.wait()
                if self._closing:
                    return
            try:
                self._send(batch)
            except Exception as error:  # whatever the client raises while the store is away
                if is_lasting_refusal(error):
                    log.error(
                        "journal: the tracking store refused %d entries: %s", len(batch), error
                    )
                    self._refused += len(batch)
                else:
                    if outage_since is None:
                        outage_since = time.monotonic()
                        log.warning(
                            "journal: the tracking store is unreachable (%s); training goes on, "
                            "its metrics wait in %s and are sent when it is back",
                            first_line(str(error)),
                            self.folder,
                        )
                    time.sleep(wait)
                    wait = min(wait * 2, LONGEST_RETRY_SECONDS)
                    continue
            with self._condition:
                self._delivered += len(batch)
                try:
                    self._save_state()
                except OSError as error:  # bookkeeping only: what it loses is sent once more
                    log.warning("journal: cannot save its state in %s (%s)", self.folder, error)
                self._condition.notify_all()
            if outage_since is not None:
                log.warning(
                    "journal: the tracking store is back after %.0f s; sending what was kept",
                    time.monotonic() - outage_since,
                )
                outage_since, wait = None, FIRST_RETRY_SECONDS

    def _send(self, batch: list[dict[str, Any]]) -> None:
        if batch[0]["kind"] == "metric":
            metrics = [
                Metric(entry["key"], entry["value"], entry["timestamp"], entry["step"])
                for entry in batch
            ]
            self.client.log_batch(self.run_id, metrics=metrics)
            return
        (image,) = batch
        for name in image["files"]:
            self.client.log_artifact(
                self.run_id, str(self.folder / IMAGES_FOLDER / name), IMAGES_FOLDER
            )
        self.client.set_tag(self.run_id, MLFLOW_LOGGED_IMAGES, "true")


def _read_entries(path: Path) -> list[dict[str, Any]]:
    """Entries written so far; a line cut short by a kill mid-write is dropped."""
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return entries


def _open_for_appending(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)


def _write_entries(path: Path, entries: list[dict[str, Any]]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text("".join(json.dumps(entry) + "\n" for entry in entries), encoding="utf-8")
    temporary.replace(path)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
