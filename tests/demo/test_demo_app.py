"""The try-it page's HTTP API (Starlette's TestClient, in-process): the mask `predict` writes,
byte for byte, at any threshold; which model answers; and a clear message for each bad input,
after which the page still answers."""

from __future__ import annotations

import base64
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from starlette.testclient import TestClient

from pipeline.demo.app import DemoModel, demo_app
from pipeline.demo.model_card import model_card
from pipeline.entrypoints import demo, predict
from pipeline.images import decode_mask
from pipeline.tracking.models import load_predictor, segmenter_of
from pipeline.tracking.tags import CANDIDATE_DICE_TAG
from tests.conftest import isolated_environment
from tests.demo.models import steep_net
from tests.segmenters import blank_png, log_model, photo_file

CHAMPION = "models:/unet-person@champion"
PHOTO = photo_file((90, 50), "RGB", "JPEG", seed=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], str]:
    """A tracking store with a registered model holding @champion and the test Dice promote
    records; returns its environment and the model's own URI. Logged once: it takes seconds."""
    env = isolated_environment(tmp_path_factory.mktemp("demo"))
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("unet-person")
    version = mlflow.register_model(log_model(steep_net()), "unet-person")
    client.set_registered_model_alias("unet-person", "champion", version.version)
    client.set_model_version_tag("unet-person", version.version, CANDIDATE_DICE_TAG, "0.812345")
    return env, version.source


@pytest.fixture
def logged(store: tuple[dict[str, str], str], monkeypatch: pytest.MonkeyPatch) -> str:
    """This test tracks into the module's store."""
    env, model_uri = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return model_uri


def client_for(model_uri: str, threshold: float = 0.5) -> TestClient:
    model = load_predictor(model_uri)
    segmenter = segmenter_of(model, model_uri)
    app = demo_app(DemoModel(model, segmenter.max_pixels), model_card(model, model_uri), threshold)
    return TestClient(app)


def predicted_mask(model_uri: str, photo: bytes, threshold: float, folder: Path) -> bytes:
    (folder / "in").mkdir(parents=True)
    (folder / "in" / "photo.jpg").write_bytes(photo)
    argv = ["--model_uri", model_uri, "--input_dir", str(folder / "in")]
    argv += ["--output_dir", str(folder / "out"), "--threshold", str(threshold)]
    assert predict.main(argv) == 0
    return (folder / "out" / "masks" / "photo.png").read_bytes()


def segment(client: TestClient, data: bytes, threshold: str | None = None):
    query = {} if threshold is None else {"threshold": threshold}
    return client.post("/api/segment", content=data, params=query)


@pytest.mark.parametrize("threshold", [0.5, 0.35])
def test_mask_is_predicts_byte_for_byte(logged: str, tmp_path: Path, threshold: float) -> None:
    client = client_for(CHAMPION, threshold=0.5)
    answer = segment(client, PHOTO, str(threshold))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    png = base64.b64decode(body["mask"])
    assert png == predicted_mask(CHAMPION, PHOTO, threshold, tmp_path)
    mask = decode_mask(png)
    assert 0 < mask.mean() < 1, "a mask of one class would hide a wrong threshold"
    assert (body["width"], body["height"], body["threshold"]) == (90, 50, threshold)
    assert body["foreground_share"] == pytest.approx(mask.mean())
    assert body["seconds"] > 0


def test_threshold_moves_the_mask_and_defaults_to_the_command_line(logged: str) -> None:
    client = client_for(CHAMPION, threshold=0.3)
    default, low, high = (segment(client, PHOTO, t).json() for t in (None, "0.3", "0.6"))
    assert default["threshold"] == 0.3 and default["mask"] == low["mask"]
    assert low["foreground_share"] > high["foreground_share"]


def test_page_names_the_registered_model_version_alias_and_test_dice(logged: str) -> None:
    info = client_for(CHAMPION).get("/api/model").json()
    assert info["model"] | {"model_id": ""} == {
        "uri": CHAMPION,
        "model_id": "",
        "name": "unet-person",
        "version": "1",
        "aliases": ["champion"],
        "test_dice": "0.812345",
    }
    assert info["model"]["model_id"].startswith("m-")
    assert info["threshold"] == 0.5 and info["max_pixels"] == 64_000_000


def test_a_model_outside_the_registry_says_so(logged: str) -> None:
    info = client_for(logged).get("/api/model").json()["model"]
    assert (info["uri"], info["name"], info["version"], info["test_dice"]) == (logged, "", "", "")


def test_page_holds_the_controls_the_browser_test_drives(logged: str) -> None:
    page = client_for(CHAMPION).get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for control in ('id="files"', 'type="range"', 'class="mask"', 'class="download"'):
        assert control in page.text, control


def test_bad_inputs_get_a_clear_message_and_the_page_keeps_serving(logged: str) -> None:
    client = client_for(CHAMPION)
    refusals = {
        "text": (segment(client, b"just some notes"), 400, "not an image"),
        "cut": (segment(client, PHOTO[:300]), 400, "unreadable image"),
        "empty": (segment(client, b""), 400, "No file came"),
        "threshold": (segment(client, PHOTO, "1.5"), 400, "threshold=1.5 must be"),
        "word": (segment(client, PHOTO, "high"), 400, "threshold=high must be"),
        "pixels": (
            segment(client, blank_png((13000, 13000))),
            413,
            "13000x13000 pixels (169.0 megapixels), over the limit of max_pixels=64000000",
        ),
    }
    for name, (answer, status, words) in refusals.items():
        assert answer.status_code == status, (name, answer.text)
        assert words in answer.json()["error"], (name, answer.json())
    assert "UNET_PERSON_MAX_PIXELS" in refusals["pixels"][0].json()["error"]
    assert segment(client, PHOTO).status_code == 200


def test_an_upload_larger_than_any_photo_under_the_limit_is_cut_off(
    logged: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNET_PERSON_MAX_PIXELS", "1000")
    client = client_for(CHAMPION)
    answer = segment(client, b"\0" * (3 << 20))
    assert answer.status_code == 413
    assert "larger than any photo under the pixel limit" in answer.json()["error"]
    small = photo_file((40, 20), seed=2)
    assert segment(client, small).status_code == 200
    too_many = segment(client, photo_file((40, 30), seed=2)).json()["error"]
    assert "max_pixels=1000" in too_many


def test_a_model_uri_that_does_not_exist_stops_the_command_naming_it(capsys) -> None:
    assert demo.main(["--model_uri", "models:/no-such-model@champion", "--port", "1"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "demo: error" in line]
    assert line.startswith("demo: error: cannot load model_uri=models:/no-such-model@champion")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--threshold", "1"], "threshold=1.0 must be between 0 and 1"),
        (["--port", "70000"], "port=70000 is not a port"),
        (["--port", "http"], "port='http' is not a valid int"),
    ],
)
def test_bad_params_stop_before_the_model_loads(argv: list[str], words: str, capsys) -> None:
    assert demo.main(argv) == 2
    assert words in capsys.readouterr().err
