"""What a promotion is asked to do: promote's parameters, checked while they are parsed (before
any run opens), kept apart from the promotion's work so the command line can read them
without loading it."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.errors import PipelineError
from pipeline.registry.versions import check_alias
from pipeline.settings import about


@dataclass(frozen=True)
class PromoteParams:
    """Register the candidate and give it the alias if it beats the model holding it on the
    same test split; every decision that moves the alias is kept on the version."""

    model_uri: str = field(metadata=about("the candidate: runs:/<run>/model or models:/<id>"))
    model_name: str = field(default="unet-person", metadata=about("registered model name"))
    alias: str = field(default="champion", metadata=about("the alias the better model holds"))
    min_improvement: float = field(
        default=0.0, metadata=about("test Dice gain over the alias holder needed to take it")
    )
    min_dice: float = field(
        default=0.5, metadata=about("test Dice the first model needs to take a free alias")
    )
    data_dir: str = field(
        default="data/processed", metadata=about("the split both models are scored on")
    )
    batch_size: int = field(default=8, metadata=about("images per forward pass when scoring"))

    def __post_init__(self) -> None:
        check_promotion(self.model_name, self.alias, self.min_improvement, self.min_dice)
        if self.batch_size < 1:
            raise PipelineError(f"parameter batch_size={self.batch_size} must be at least 1")


def check_name(model_name: str) -> None:
    """Names go into search filters in quotes."""
    if not model_name or "'" in model_name:
        raise PipelineError(
            f"parameter model_name={model_name!r} must be a name without quotes, e.g. unet-person"
        )


def check_promotion(model_name: str, alias: str, min_improvement: float, min_dice: float) -> None:
    """The promotion's parameters, checked before any run opens (promote's and main's)."""
    check_name(model_name)
    check_alias(alias)
    if min_improvement < 0:
        raise PipelineError(
            f"parameter min_improvement={min_improvement} must be 0 or more (a Dice gain)"
        )
    if not 0 <= min_dice <= 1:
        raise PipelineError(f"parameter min_dice={min_dice} must be between 0 and 1")
