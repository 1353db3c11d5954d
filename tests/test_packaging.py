"""One source of truth for dependencies: conda.yaml lists exactly pyproject's requirements."""

from __future__ import annotations

import tomllib
import yaml

from pipeline.orchestration.project import project_dir


def test_conda_env_matches_pyproject() -> None:
    root = project_dir()
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((root / "conda.yaml").read_text())
    (pip_section,) = [entry for entry in conda["dependencies"] if isinstance(entry, dict)]
    assert sorted(pip_section["pip"]) == sorted(declared)


def test_readme_test_command_is_what_ci_runs() -> None:
    root = project_dir()
    readme_lines = (root / "README.md").read_text().splitlines()
    commands = [line for line in readme_lines if line.startswith(".venv/bin/python -m pytest")]
    assert commands, "README must state the test command"
    assert "README.md" in (root / ".ci" / "run").read_text()
