"""One source of truth for dependencies: conda.yaml lists exactly pyproject's requirements."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

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


def _distribution(requirement: str) -> str:
    name = re.split(r"[<>=!~\[;\s]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_of_the_package_is_declared() -> None:
    """Each module pipeline/ imports from outside the standard library comes from a
    distribution pyproject.toml (and so conda.yaml) declares, not from one that happens to be
    installed as another's dependency; the pretrained encoders' and Spark's from their optional
    extras (imported only where an encoder is built, or by predict_spark)."""
    root = project_dir()
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    declared = {
        _distribution(requirement)
        for requirement in [
            *project["dependencies"],
            *project["optional-dependencies"]["encoders"],
            *project["optional-dependencies"]["spark"],
            *project["optional-dependencies"]["stream"],
        ]
    }
    imported: dict[str, set[str]] = {}
    for path in (root / "pipeline").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                imported.setdefault(name.partition(".")[0], set()).add(path.name)
    third_party = set(imported) - set(sys.stdlib_module_names) - {"pipeline", "__future__"}
    providers = packages_distributions()
    undeclared = {
        module: sorted(imported[module])
        for module in sorted(third_party)
        if not {_distribution(name) for name in providers.get(module, [])} & declared
    }
    assert not undeclared, f"imported but not in pyproject.toml's dependencies: {undeclared}"
