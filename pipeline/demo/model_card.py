"""Which model answers on the page: its URI, logged-model id and, for a registry URI, the
registered name, version, aliases and the test Dice its promotion recorded.

A person trying photos should know whether they see the champion or some other model; the
registry is where that is written, so the card is read from it once, when the page starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.tracking.model_names import registry_version
from pipeline.tracking.tags import CANDIDATE_DICE_TAG


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
