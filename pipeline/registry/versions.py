"""The registry side of promotion: one version per logged model, and who holds an alias."""

from __future__ import annotations

import re

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient

from pipeline.console import log
from pipeline.errors import PipelineError, first_line
from pipeline.tracking.concurrent_writes import write_despite_races
from pipeline.tracking.model_names import nearest_model

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
            f"cannot find model_uri={model_uri} ({first_line(error)}){nearest_model(model_uri)}; "
            "use the train run's model URI, e.g. models:/<model_id> or runs:/<run_id>/model as "
            "the MLflow UI shows it"
        ) from error
    if not model_id:
        raise PipelineError(
            f"model_uri={model_uri} has no logged-model id (logged before MLflow 3): train it "
            "again with `python -m pipeline train`"
        )
    return model_id


def _is_missing(error: MlflowException) -> bool:
    return error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def versions_of(client: MlflowClient, name: str, model_id: str) -> list[str]:
    """The live versions of `name` made from logged model `model_id`, lowest number first.

    Matched by source: MLflow 3.17's SQL store keeps a version's `models:/<id>` source but
    drops its model_id. Deleted versions are left out by the store.
    """
    try:
        versions = client.search_model_versions(
            f"name = '{name}' and source_path = 'models:/{model_id}'"
        )
    except MlflowException as error:
        if _is_missing(error):
            return []
        raise
    return sorted((str(version.version) for version in versions), key=int)


def register(name: str, model_id: str) -> str:
    """A new version of `name` (made if need be) for logged model `model_id`; its number."""
    try:
        return str(mlflow.register_model(f"models:/{model_id}", name).version)
    except MlflowException as error:
        raise PipelineError(
            f"cannot register model {model_id} as model_name={name!r} ({error.message})"
        ) from error


def register_once(client: MlflowClient, name: str, model_id: str) -> str:
    """The one version of `name` for logged model `model_id`, made if there is none.

    "Is it a version yet?" then "register it" is two calls, and processes that share no lock
    (other machines, one server) can both find nothing and both register. So after
    registering, look again: the lowest version of this model is the one it keeps, and a
    process whose version is a higher duplicate deletes that version itself and uses the
    lowest. This converges: a version's number is taken only after every lower one is written
    (the store gives max + 1 under a UNIQUE key), so the process that made a duplicate sees the
    lower version it loses to, and the lowest is never deleted by anyone.
    """
    known = versions_of(client, name, model_id)
    if known:
        return known[0]
    try:
        made = register(name, model_id)
    except PipelineError:
        # MLflow gives up making a version after a few clashes on its number with others
        # registering at once; one of them may have registered this very model.
        known = versions_of(client, name, model_id)
        if not known:
            raise
        return known[0]
    kept = versions_of(client, name, model_id)[0]
    if kept != made:
        log.info("%s version %s duplicates version %s: deleting it", name, made, kept)
        client.delete_model_version(name, made)
    return kept


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


def set_alias(client: MlflowClient, name: str, alias: str, version: str) -> None:
    """Point `name@alias` at `version`, also when another process sets the alias at once; accept
    the alias when the other process pointed it at `version` too."""
    write_despite_races(
        f"point {name}@{alias} at version {version}",
        lambda: client.set_registered_model_alias(name, alias, version),
        settled=lambda: alias_holder(client, name, alias) == version,
    )


def describe_version(client: MlflowClient, name: str, version: str, description: str) -> None:
    """Set version `version`'s description, also when another process writes it at once."""
    write_despite_races(
        f"describe {name} version {version}",
        lambda: client.update_model_version(name, version, description=description),
        settled=lambda: False,
    )


def set_version_tags(client: MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    """Tag version `version` of `name`, also when another process tags it at once."""
    for key, value in tags.items():
        write_despite_races(
            f"tag {name} version {version} with {key}",
            lambda key=key, value=value: client.set_model_version_tag(name, version, key, value),
            settled=lambda: False,
        )
