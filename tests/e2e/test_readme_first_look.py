"""The README's first look as a reader runs it: its first code block's `main` command, the same
string, end to end, and what the README says of it."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.orchestration.project import project_dir
from tests.conftest import isolated_environment

pytestmark = pytest.mark.e2e

README = project_dir() / "README.md"


def first_look() -> list[str]:
    """The words of the `python -m pipeline main` that ends the README's first bash block."""
    block = re.search(r"^```bash\n(.*?)^```", README.read_text(), re.MULTILINE | re.DOTALL)
    assert block, "README: no bash block"
    (line,) = [line for line in block.group(1).splitlines() if line.strip()]
    words = shlex.split(line.split(" && ")[-1])
    assert words[:4] == [".venv/bin/python", "-m", "pipeline", "main"], words
    return words


def test_the_first_look_is_the_generated_data_one() -> None:
    """The block a reader pastes first on a laptop is the quick one, not the Kaggle run."""
    words = first_look()
    assert words[words.index("--source") + 1].startswith("synthetic:")


def test_the_readme_first_look_runs_and_its_model_becomes_the_champion(tmp_path: Path) -> None:
    env = isolated_environment(tmp_path)
    result = subprocess.run(
        [sys.executable, *first_look()[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.stdout[result.stdout.index("pipeline done: run ") :]
    test_dice = float(re.search(r"test Dice (\d\.\d+)", summary).group(1))
    # README: the model clears min_dice (0.5) and becomes models:/unet-person@champion.
    assert test_dice > 0.5, summary
    assert "promote: unet-person version 1 promoted" in summary, summary
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias("unet-person", "champion")
    assert str(champion.version) == "1"  # SQLite answers with an int
