"""Which model answers on the page: its URI, logged-model id and, for a registry URI, the
registered name, version, aliases and the test Dice its promotion recorded.

A person trying photos should know whether they see the champion or some other model; the
registry is where that is written, so the card is read from it once, when the page starts.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.tracking.tags import CANDIDATE_DICE_TAG

ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")


@dataclass(frozen=True)
class ModelCard:
    uri: str
    model_id: str
    name: str = ""
    version: str = ""
    aliases: tuple[str, ...] = ()
    test_dice: str = ""

    def as_json(self) -> dict:
        return asdict(self) | {"aliases": list(self.aliases)}


def registry_version(client: MlflowClient, model_uri: str) -> ModelVersion | None:
    """The registered version a `models:/<name>@<alias>` or `models:/<name>/<n>` URI names;
    None for URIs outside the registry (runs:/..., models:/<model_id>)."""
    by_alias, by_number = ALIAS_URI.match(model_uri), VERSION_URI.match(model_uri)
    if by_alias:
        return client.get_model_version_by_alias(by_alias["name"], by_alias["alias"])
    if by_number:
        return client.get_model_version(by_number["name"], by_number["version"])
    return None


def model_card(model: mlflow.pyfunc.PyFuncModel, model_uri: str) -> ModelCard:
    """The card of a loaded model. The registry is read after loading succeeded, so a URI that
    does not exist has already been refused with load_predictor's message."""
    card = ModelCard(uri=model_uri, model_id=model.metadata.model_id or "")
    try:
        version = registry_version(MlflowClient(), model_uri)
    except MlflowException:  # moved or deleted since loading: the page still works
        return card
    if version is None:
        return card
    return ModelCard(
        uri=model_uri,
        model_id=card.model_id,
        name=version.name,
        version=str(version.version),
        aliases=tuple(version.aliases or ()),
        test_dice=version.tags.get(CANDIDATE_DICE_TAG, ""),
    )
