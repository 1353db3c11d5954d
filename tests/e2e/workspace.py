"""A folder with its own tracking store where entry points run as `mlflow run` runs them."""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipeline.orchestration.project import project_dir, step_command


@dataclass
class Workspace:
    folder: Path
    env: dict[str, str]
    settings: dict[str, str]

    def params(self, **overrides: str) -> dict[str, str]:
        return {
            **self.settings,
            "raw_dir": str(self.folder / "raw"),
            "processed_dir": str(self.folder / "processed"),
            "checkpoint_dir": str(self.folder / "checkpoints"),
            **overrides,
        }

    def run(self, entry_point: str, params: dict[str, str], **env: str):
        """An entry point's MLproject command, as `mlflow run` computes it, run here."""
        command = shlex.split(step_command(entry_point, params))
        assert command[0] == "python"
        return subprocess.run(
            [sys.executable, *command[1:]],
            cwd=project_dir(),
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.env["MLFLOW_TRACKING_URI"])

    def runs(self) -> list[Run]:
        experiment = self.client().get_experiment_by_name("unet-person")
        return self.client().search_runs([experiment.experiment_id], max_results=1000)


def children(workspace: Workspace, parent: Run) -> dict[str, Run]:
    found = [
        run
        for run in workspace.runs()
        if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    return {run.data.tags["mlflow.project.entryPoint"]: run for run in found}
