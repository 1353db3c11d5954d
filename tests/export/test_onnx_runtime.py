"""The ONNX export in use: the logged model carries it, the Segmenter runs it in ONNX Runtime
(predict's --runtime onnx, UNET_PERSON_RUNTIME for serving) with PyTorch's masks, the `export`
entry point writes it for any model URI, and what cannot work is named."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.entrypoints import export, predict
from pipeline.errors import PipelineError
from pipeline.export.onnx_export import IMAGES
from pipeline.images import decode_mask
from pipeline.serving.onnx_runtime import OnnxNetwork
from pipeline.serving.segmenter import (
    ARCHITECTURE,
    MODEL_CODE,
    RUNTIME_VARIABLE,
    WEIGHTS,
)
from pipeline.tracking.models import load_predictor, segmenter_of
from tests.conftest import last_run
from tests.segmenters import IMAGE_SIZE, log_model, photo_file, varied_net

# Several sizes, modes and an EXIF turn: the Segmenter resizes each for the network and back.
PHOTOS = [
    photo_file((90, 50), "RGB", "JPEG", seed=1),
    photo_file((30, 80), "RGBA", seed=2),
    photo_file((IMAGE_SIZE, IMAGE_SIZE), seed=3),
    photo_file((200, 150), "L", seed=4),
    photo_file((70, 36), "RGB", "JPEG", seed=5, orientation=6),
]
MIN_AGREEMENT = 0.999


def masks(model: mlflow.pyfunc.PyFuncModel) -> list[np.ndarray]:
    frame = pd.DataFrame({"image": [base64.b64encode(photo).decode() for photo in PHOTOS]})
    return [decode_mask(base64.b64decode(text)) for text in model.predict(frame)["mask"]]


def assert_same_masks(got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    for mask, reference in zip(got, expected, strict=True):
        assert mask.shape == reference.shape
        assert 0 < reference.mean() < 1  # both classes, so agreement can fail
        assert np.mean(mask == reference) >= MIN_AGREEMENT


def assert_answers_as(net: torch.nn.Module, onnx_file: Path, shape: tuple[int, ...]) -> None:
    """The file's logits in ONNX Runtime are the network's, at a size other than image_size."""
    photos = np.random.default_rng(0).integers(0, 256, shape, np.uint8)
    (logits,) = onnxruntime.InferenceSession(str(onnx_file)).run(None, {IMAGES: photos})
    with torch.inference_mode():
        expected = net.eval()(torch.from_numpy(photos).float() / 255).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)


def test_the_segmenter_gives_pytorchs_masks_on_onnx_runtime(monkeypatch, tmp_path: Path) -> None:
    net = varied_net()
    uri = log_model(net, onnx=True)
    # `mlflow artifacts download -u models:/<id>` brings artifacts/unet.onnx with the model.
    folder = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"))
    assert_answers_as(net, Path(folder) / "artifacts" / "unet.onnx", (2, 3, 64, 96))

    torch_model = load_predictor(uri)
    onnx_model = load_predictor(uri, "onnx")
    assert isinstance(segmenter_of(onnx_model, uri).network, OnnxNetwork)
    expected = masks(torch_model)
    assert_same_masks(masks(onnx_model), expected)

    # `mlflow models serve` loads the model plainly: the environment chooses the runtime.
    monkeypatch.setenv(RUNTIME_VARIABLE, "onnx")
    served = mlflow.pyfunc.load_model(uri)
    assert served.unwrap_python_model().runtime == "onnx"
    assert_same_masks(masks(served), expected)
    monkeypatch.setenv(RUNTIME_VARIABLE, "tensorrt")
    with pytest.raises(ValueError, match=rf"runtime 'tensorrt' .*{RUNTIME_VARIABLE}"):
        mlflow.pyfunc.load_model(uri)


def test_predict_on_onnx_runtime_writes_pytorchs_masks(tmp_path: Path, capsys) -> None:
    uri = log_model(varied_net(), onnx=True)
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, photo in enumerate(PHOTOS):
        (photos / f"{index}.png").write_bytes(photo)
    for runtime in ("torch", "onnx"):
        argv = ["--model_uri", uri, "--input_dir", str(photos), "--runtime", runtime]
        assert predict.main([*argv, "--output_dir", str(tmp_path / runtime)]) == 0
    written = {
        runtime: [
            decode_mask(path.read_bytes()) for path in sorted((tmp_path / runtime).glob("masks/*"))
        ]
        for runtime in ("torch", "onnx")
    }
    assert len(written["onnx"]) == len(PHOTOS)
    assert_same_masks(written["onnx"], written["torch"])
    assert last_run().data.params["runtime"] == "onnx"

    argv = ["--model_uri", uri, "--input_dir", str(photos), "--runtime", "tensorrt"]
    assert predict.main(argv) == 2
    assert "parameter runtime='tensorrt' is not one of torch, onnx" in capsys.readouterr().err


def log_model_before_the_export() -> str:
    """A model as train logged it before the ONNX export and the runtime choice: no onnx
    artifact, no model_config."""
    net = varied_net()
    folder = Path("old-model")
    folder.mkdir()
    torch.save(net.state_dict(), folder / "unet.pt")
    architecture = {**net.config.to_dict(), "image_size": IMAGE_SIZE}
    (folder / "unet.json").write_text(json.dumps(architecture))
    with mlflow.start_run():
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={WEIGHTS: str(folder / "unet.pt"), ARCHITECTURE: str(folder / "unet.json")},
            code_paths=[str(Path(__file__).parents[2] / "pipeline")],
        ).model_uri


def test_runtime_onnx_without_an_export_says_to_run_export() -> None:
    # Logged before the runtime choice existed; logged by `train --onnx false` today.
    for uri in (log_model_before_the_export(), log_model(varied_net(), onnx=False)):
        with pytest.raises(PipelineError) as raised:
            load_predictor(uri, "onnx")
        message = str(raised.value)
        assert (
            f"runtime=onnx needs the model's ONNX export, and model_uri={uri} has none" in message
        )
        assert f"`python -m pipeline export --model_uri {uri}`" in message
        assert "--runtime torch" in message


def test_onnx_false_logs_the_model_without_the_file_and_the_torch_runtime_serves_it() -> None:
    net = varied_net()
    with_export, without = log_model(net, onnx=True), log_model(net, onnx=False)
    for uri, files in ((with_export, ["unet.json", "unet.onnx", "unet.pt"]),
                       (without, ["unet.json", "unet.pt"])):  # fmt: skip
        folder = Path(mlflow.artifacts.download_artifacts(uri)) / "artifacts"
        assert sorted(path.name for path in folder.iterdir()) == files
    assert_same_masks(masks(load_predictor(without)), masks(load_predictor(with_export)))


def test_export_writes_a_checked_file_for_any_model_uri(tmp_path: Path) -> None:
    net = varied_net()
    uri = log_model_before_the_export()  # export does not need train's export
    output = tmp_path / "exports" / "person.onnx"
    assert export.main(["--model_uri", uri, "--output_path", str(output), "--opset", "18"]) == 0

    assert_answers_as(net, output, (3, 3, 64, 96))

    run = last_run()
    assert run.info.status == "FINISHED"
    assert run.data.params["opset"] == "18"
    model_id = mlflow.models.get_model_info(uri).model_id
    assert run.data.tags["unet_person.exported_model_id"] == model_id
    assert run.data.metrics["onnx_max_abs_logit_diff"] < 1e-4
    assert run.data.metrics["onnx_mask_agreement"] >= MIN_AGREEMENT
    logged = MlflowClient().download_artifacts(run.info.run_id, "person.onnx", str(tmp_path))
    assert Path(logged).read_bytes() == output.read_bytes()


def test_export_names_bad_parameters(tmp_path: Path, capsys) -> None:
    assert export.main(["--model_uri", "models:/nothing@here", "--opset", "9"]) == 2
    assert "parameter opset=9 is not one this exporter writes: use 18 to 23" in (
        capsys.readouterr().err
    )
    assert export.main(["--model_uri", "models:/nothing@here", "--output_path", str(tmp_path)]) == 2
    assert f"output_path={tmp_path} is a folder" in capsys.readouterr().err
    assert export.main(["--model_uri", "models:/nothing@here"]) == 2
    assert "cannot load model_uri=models:/nothing@here" in capsys.readouterr().err
