"""The part of the `pipeline` package a logged model carries: what its model code imports.

MLflow copies each `code_paths` entry into the model's code/ folder under the entry's own name
and puts that folder first on sys.path when the model loads. Passing the whole package would
ship the synthetic-data generator, training, the demo and the rest inside every model; instead
the modules the model's code file imports are followed import by import (imports inside
functions included, such as the ONNX runtime's), staged with their packages' `__init__.py` in a
`pipeline/` folder of their own, and that folder is what the model carries.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from pipeline.tracking.code_version import PACKAGE_ROOT

PACKAGE = PACKAGE_ROOT.name


def _module_file(name: str) -> Path | None:
    """The package's file for module `name` (a module's .py or a package's __init__.py)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    folder = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (folder / "__init__.py", folder.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> list[str]:
    parts = [PACKAGE, *path.relative_to(PACKAGE_ROOT).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported_files(path: Path) -> set[Path]:
    """The package's files that `path` imports, wherever in it the import statement is."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            parent = ".".join([*base, *(node.module.split(".") if node.module else [])])
            # `from pipeline.serving import segmenter` imports a module by a name in its package.
            names += [parent, *(f"{parent}.{alias.name}" for alias in node.names)]
    found = {_module_file(name) for name in names}
    return {file for file in found if file is not None}


def model_code_files(entry: Path) -> list[Path]:
    """Every file of the package that loading and running `entry` can import, with the
    __init__.py of each package on the way, relative to the package root."""
    needed: set[Path] = set()
    pending = [entry.resolve()]
    while pending:
        path = pending.pop()
        if path in needed:
            continue
        needed.add(path)
        pending += _imported_files(path)
        pending += [
            folder / "__init__.py"
            for folder in path.parents
            if folder.is_relative_to(PACKAGE_ROOT) and (folder / "__init__.py").is_file()
        ]
    return sorted(path.relative_to(PACKAGE_ROOT) for path in needed)


def staged_package(entry: Path, folder: Path) -> Path:
    """A `pipeline/` folder under `folder` holding only `model_code_files(entry)`: the
    `code_paths` entry that keeps `import pipeline...` working inside the model."""
    staged = folder / PACKAGE
    for relative in model_code_files(entry):
        target = staged / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PACKAGE_ROOT / relative, target)
    return staged
