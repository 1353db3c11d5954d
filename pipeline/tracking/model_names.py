"""Registered model URIs a person types: the version one names, and the nearest registered
name or alias to one that is not there, for the one-line error that refuses it."""

from __future__ import annotations

import difflib
import re

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

REGISTERED_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))$")


def registry_version(client: mlflow.MlflowClient, model_uri: str) -> ModelVersion | None:
    """The registered version a `models:/<name>@<alias>` or `models:/<name>/<n>` URI names;
    None for URIs outside the registry (runs:/..., models:/<model_id>)."""
    match = REGISTERED_URI.match(model_uri)
    if not match:
        return None
    if match["alias"] is not None:
        return client.get_model_version_by_alias(match["name"], match["alias"])
    if match["version"].isdigit():
        return client.get_model_version(match["name"], match["version"])
    return None


def nearest_model(model_uri: str) -> str:
    """`: did you mean models:/unet-person@champion?` for a registered name or alias that is
    not there but close to one that is (difflib), else nothing."""
    match = REGISTERED_URI.match(model_uri)
    if not match:
        return ""
    name, alias = match["name"], match["alias"]
    client = mlflow.MlflowClient()
    try:
        names = [model.name for model in client.search_registered_models(max_results=1000)]
        if name in names and alias is not None:
            aliases = list(client.get_registered_model(name).aliases)
            close = difflib.get_close_matches(alias, aliases, n=1)
            return f": did you mean models:/{name}@{close[0]}?" if close else ""
    except MlflowException:
        return ""
    close = difflib.get_close_matches(name, names, n=1)
    if not close:
        return ""
    rest = f"@{alias}" if alias is not None else f"/{match['version']}"
    return f": did you mean models:/{close[0]}{rest}?"
