"""The registry side of promotion: one version per logged model, and who holds an alias."""

from __future__ import annotations

import re

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from pipeline.errors import PipelineError

# MLflow's rule for alias names; checked before any work, since the alias is set last.
ALIAS_PATTERN = re.compile(r"^[\w\-]+$")
RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)


def check_alias(alias: str) -> None:
    if not ALIAS_PATTERN.match(alias) or RESERVED_ALIAS.match(alias):
        raise PipelineError(
            f"parameter alias={alias!r} is not a usable alias: use letters, digits, _ and - "
            "(MLflow reserves 'latest' and v<number>), e.g. champion"
        )


def model_id_of(model_uri: str) -> str:
    """The logged model behind any model URI (runs:/, models:/<id>, models:/<name>@<alias>)."""
    try:
        model_id = mlflow.models.get_model_info(model_uri).model_id
    except (MlflowException, OSError) as error:
        raise PipelineError(
            f"cannot find model_uri={model_uri} ({error}); use the train run's model URI, "
            "e.g. models:/<model_id> or runs:/<run_id>/model as the MLflow UI shows it"
        ) from error
    if not model_id:
        raise PipelineError(
            f"model_uri={model_uri} has no logged-model id (logged before MLflow 3): train it "
            "again with `python -m pipeline train`"
        )
    return model_id


def _is_missing(error: MlflowException) -> bool:
    return error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def version_of(client: MlflowClient, name: str, model_id: str) -> str | None:
    """The number of the version of `name` made from logged model `model_id`, if there is one:
    promoting the same model twice must not make a second version of the same weights."""
    source = f"models:/{model_id}"
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as error:
        if _is_missing(error):
            return None
        raise
    found = [str(v.version) for v in versions if v.model_id == model_id or v.source == source]
    return found[0] if found else None


def register(name: str, model_id: str) -> str:
    """A new version of `name` (made if need be) for logged model `model_id`; its number."""
    try:
        return str(mlflow.register_model(f"models:/{model_id}", name).version)
    except MlflowException as error:
        raise PipelineError(
            f"cannot register model {model_id} as model_name={name!r} ({error.message})"
        ) from error


def alias_holder(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version number `name@alias` points at now, or None before the first promotion.

    Version numbers are strings here, as stores answer with ints or strings.
    """
    try:
        version = client.get_registered_model(name).aliases.get(alias)
    except MlflowException as error:
        if _is_missing(error):
            return None
        raise
    return None if version is None else str(version)
