"""Pretrained encoders without the Hub, in seconds: each offered encoder's family at a tiny size,
and an offline Hub cache whose 'pretrained' weights for each are tiny checkpoints made here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pipeline.model.encoders import SPECS, backbone_classes

# One block a stage, a few channels: the family's layers, at a fraction of the cost.
TINY = {
    "resnet": {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 24, 32], "embedding_size": 8},
    "convnext": {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 24, 32]},
}
COMMIT = "0" * 40


def tiny_encoders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every encoder built at TINY size, for the rest of the test."""
    for name, spec in list(SPECS.items()):
        settings = {**spec.settings, **TINY[spec.family]}
        monkeypatch.setitem(SPECS, name, dataclasses.replace(spec, settings=settings))


def offline_hub(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """The Hub's cache is `cache`, and nothing is downloaded (HF_HUB_OFFLINE)."""
    from huggingface_hub import constants

    cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def classifier(name: str, seed: int = 0, **settings) -> torch.nn.Module:
    """The Hub's kind of model for encoder `name`, an ImageNet classifier, at its current
    (tiny) size or with `settings` changed; random weights from `seed`."""
    import transformers

    spec = SPECS[name]
    config_class, _ = backbone_classes(spec.family)
    model_class = getattr(
        transformers, config_class.__name__.removesuffix("Config") + "ForImageClassification"
    )
    torch.manual_seed(seed)
    return model_class(config_class(**{**spec.settings, **settings}))


def put_in_cache(cache: Path, hub_id: str, model: torch.nn.Module) -> None:
    """`model` saved where the Hub's client looks for `hub_id` at revision main."""
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    model.save_pretrained(repo / "snapshots" / COMMIT)


def tiny_hub(monkeypatch: pytest.MonkeyPatch, cache: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Tiny encoders, and an offline Hub cache with a tiny classifier checkpoint as each one's
    pretrained weights; their state_dicts, by encoder."""
    tiny_encoders(monkeypatch)
    offline_hub(monkeypatch, cache)
    saved = {}
    for seed, (name, spec) in enumerate(SPECS.items()):
        model = classifier(name, seed)
        put_in_cache(cache, spec.hub_id, model)
        saved[name] = model.state_dict()
    return saved


def backbone_weights(name: str, checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's share of a classifier checkpoint, by the backbone's own names."""
    prefix = SPECS[name].family + "."
    return {
        key.removeprefix(prefix): value
        for key, value in checkpoint.items()
        if key.startswith(prefix) and not key.startswith(prefix + "layernorm")
    }
