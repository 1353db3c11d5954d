"""The try-it page in a real browser: `python -m pipeline demo` started as a user starts it, and
Debian's headless Chromium driven through Selenium to pick photos, read the mask the page shows
and move the threshold slider. The mask must be predict's, byte for byte and pixel for pixel as
the browser decoded it; a file that is not an image gets its message on its own card while the
photo beside it is masked. A screenshot of the page is saved in the test's folder."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from pipeline.entrypoints import predict
from pipeline.images import decode_mask
from tests.conftest import free_port
from tests.demo.models import steep_net
from tests.segmenters import champion_store, photo_file

pytestmark = pytest.mark.e2e

CHAMPION = "models:/unet-person@champion"
START_TIMEOUT_S = 90
WAIT_S = 30
WINDOW = (1280, 900)
# The pixels of an <img> as the browser decoded them: drawn on a canvas at its natural size,
# read back as RGBA. PNG decoding is lossless, so they must be the mask's own.
READ_PIXELS = """
const img = arguments[0];
const canvas = document.createElement("canvas");
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const context = canvas.getContext("2d");
context.drawImage(img, 0, 0);
const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
let grey = "";
for (let i = 0; i < data.length; i += 4) grey += String.fromCharCode(data[i]);
return [canvas.width, canvas.height, btoa(grey)];
"""


def chromium_paths() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail(
            "the browser test needs Debian's chromium and chromium-driver: "
            "apt-get install chromium chromium-driver (.ci/run installs them)"
        )
    return browser, driver


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """The demo on a loopback port, serving the champion of a fresh store; its URL and env."""
    folder = tmp_path_factory.mktemp("demo-page")
    env = champion_store(folder, steep_net())
    port = free_port()
    log = folder / "demo.log"
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "demo", "--port", str(port), "--threshold", "0.5"],
        cwd=folder,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() - started < START_TIMEOUT_S, log.read_text()[-3000:]
            try:
                if requests.get(f"{url}/api/model", timeout=2).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        print(f"demo answered {time.monotonic() - started:.1f} s after it was started")
        yield url, env
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    binary, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def predicted(photo: Path, threshold: float, output: Path) -> bytes:
    """The mask PNG `predict` writes for the photo at the threshold (tracked in this process)."""
    argv = ["--model_uri", CHAMPION, "--input_dir", str(photo.parent), "--output_dir", str(output)]
    assert predict.main([*argv, "--threshold", str(threshold)]) == 0
    return (output / "masks" / photo.with_suffix(".png").name).read_bytes()


def card_named(browser: WebDriver, name: str):
    (card,) = [
        card
        for card in browser.find_elements(By.CSS_SELECTOR, "#results .card")
        if card.find_element(By.CSS_SELECTOR, ".name").text == name
    ]
    return card


def shown_mask(browser: WebDriver, card) -> tuple[bytes, np.ndarray]:
    """The mask PNG the card's <img> holds, and its pixels as the browser decoded them."""
    image = card.find_element(By.CSS_SELECTOR, "img.mask")
    png = base64.b64decode(image.get_attribute("src").split(",", 1)[1])
    width, height, grey = browser.execute_script(READ_PIXELS, image)
    pixels = np.frombuffer(base64.b64decode(grey), dtype=np.uint8).reshape(height, width)
    return png, pixels


def test_page_masks_picked_photos_as_predict_does(
    page: tuple[str, dict[str, str]],
    browser: WebDriver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, env = page
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = photos / "walker.png"
    photo.write_bytes(photo_file((320, 240), seed=7))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")

    browser.get(url)
    WebDriverWait(browser, WAIT_S).until(
        lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true"
    )
    model_line = browser.find_element(By.ID, "model").text
    assert "unet-person version 1" in model_line and "@champion" in model_line, model_line

    browser.find_element(By.ID, "files").send_keys(f"{photo}\n{notes}")
    cards = "#results .card"
    WebDriverWait(browser, WAIT_S).until(
        lambda b: (
            len(b.find_elements(By.CSS_SELECTOR, cards)) == 2
            and not b.find_elements(By.CSS_SELECTOR, f'{cards}[data-state="busy"]')
        )
    )
    refused = card_named(browser, "notes.txt")
    assert refused.get_attribute("data-state") == "error"
    assert "not an image" in refused.find_element(By.CSS_SELECTOR, ".error").text
    card = card_named(browser, "walker.png")
    assert card.get_attribute("data-state") == "done"
    facts = card.find_element(By.CSS_SELECTOR, ".facts").text
    assert "320 \u00d7 240 px" in facts and "ms" in facts and "person" in facts, facts
    link = card.find_element(By.CSS_SELECTOR, "a.download")
    assert link.get_attribute("download") == "walker-mask.png"

    png, pixels = shown_mask(browser, card)
    expected = predicted(photo, 0.5, tmp_path / "at-0.5")
    assert png == expected
    assert np.array_equal(pixels > 127, decode_mask(expected))
    assert 0.05 < (pixels > 127).mean() < 0.95, "both classes, so a wrong mask shows"
    assert link.get_attribute("href").endswith(base64.b64encode(expected).decode("ascii"))
    browser.save_screenshot(str(tmp_path / "demo-page.png"))
    with Image.open(tmp_path / "demo-page.png") as screenshot:
        assert screenshot.width == WINDOW[0]

    browser.execute_script(
        "const s = document.getElementById('threshold'); s.value = '0.35';"
        "s.dispatchEvent(new Event('input')); s.dispatchEvent(new Event('change'));"
    )
    WebDriverWait(browser, WAIT_S).until(
        lambda b: card_named(b, "walker.png").get_attribute("data-threshold") == "0.35"
    )
    lower_png, lower_pixels = shown_mask(browser, card_named(browser, "walker.png"))
    assert lower_png == predicted(photo, 0.35, tmp_path / "at-0.35")
    assert (lower_pixels > 127).mean() > (pixels > 127).mean()
    with Image.open(io.BytesIO(lower_png)) as mask:
        assert mask.size == (320, 240)
