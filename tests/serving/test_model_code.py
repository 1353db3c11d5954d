"""The logged model carries the code it runs and nothing else: the modules the Segmenter imports,
not training or the synthetic-data generator, and it loads and predicts from those alone."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd

from pipeline.serving.segmenter import MODEL_CODE
from pipeline.tracking.code_paths import model_code_files
from tests.segmenters import log_model, photo_file, varied_net

# Run in a fresh interpreter: every `pipeline` module must come from the model's code/ folder.
# The checkout is installed (editable here), so a module missing from code/ would otherwise load
# from the checkout unnoticed; a finder placed first refuses any `pipeline` module found elsewhere.
PROBE = """
import base64, importlib.abc, json, sys
from pathlib import Path

model_dir, photo = Path(sys.argv[1]), sys.argv[2]
code = model_dir / "code"


class OnlyTheModelsCode(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] != "pipeline":
            return None
        for finder in sys.meta_path:
            if finder is not self and (spec := finder.find_spec(name, path, target)):
                break
        else:
            return None
        if spec.origin is None or not Path(spec.origin).is_relative_to(code):
            raise ImportError(f"{name} would come from {spec.origin}, not the model's code/")
        return spec


sys.meta_path.insert(0, OnlyTheModelsCode())
try:
    import pipeline
except ImportError:
    pass
else:
    raise SystemExit(f"pipeline importable before the model is loaded: {pipeline.__file__}")

import mlflow
import pandas as pd

request = pd.DataFrame({"image": [photo]})
masks = {
    runtime: mlflow.pyfunc.load_model(str(model_dir), model_config={"runtime": runtime})
    .predict(request)["mask"][0]
    for runtime in ("torch", "onnx")
}
modules = {
    name: module.__file__
    for name, module in sys.modules.items()
    if name.partition(".")[0] == "pipeline"
}
print(json.dumps({"masks": masks, "modules": modules}))
"""


def test_the_model_carries_only_the_code_it_runs(tmp_path: Path) -> None:
    model_uri = log_model(varied_net(), onnx=True)
    model_dir = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "m")))
    code = model_dir / "code" / "pipeline"
    carried = sorted(path.relative_to(code) for path in code.rglob("*") if path.is_file())
    assert carried == model_code_files(MODEL_CODE)
    assert {Path("model/unet.py"), Path("model/inputs.py")} <= set(carried)
    assert {Path("serving/segmenter.py"), Path("images.py")} <= set(carried)
    assert Path("serving/onnx_runtime.py") in carried  # imported lazily, for runtime onnx
    assert not (code / "data").exists()  # the 500-line synthetic-data generator among others
    assert not (code / "training").exists()

    photo = base64.b64encode(photo_file((40, 24), seed=3)).decode("ascii")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    loaded = subprocess.run(
        [sys.executable, "-I", "-c", PROBE, str(model_dir), photo],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    found = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert "pipeline.serving.segmenter" in found["modules"]
    for name, file in found["modules"].items():
        assert Path(file).is_relative_to(model_dir / "code"), (name, file)
    in_process = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"image": [photo]}))
    assert found["masks"] == {"torch": in_process["mask"][0], "onnx": found["masks"]["onnx"]}
    assert base64.b64decode(found["masks"]["onnx"]).startswith(b"\x89PNG")
