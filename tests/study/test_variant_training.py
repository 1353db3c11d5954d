"""Every variant of the study builds its network, trains a step and logs into its MLflow run."""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.data.datamodule import PersonDataModule
from pipeline.study.variants import VARIANTS, plan_variants
from pipeline.training import fit as training_fit
from pipeline.training.runtime import RuntimeConfig
from pipeline.training_params import TrainingParams
from tests.encoders import tiny_hub
from tests.training.caches import write_cache

SIDE = 32  # depth 5 pools 32 pixels down to 1
TINY = {"max_epochs": 1, "patience": 1, "batch_size": 4, "base_channels": 2}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cache(tmp_path_factory.mktemp("cache"), side=SIDE)


@pytest.mark.parametrize("name", sorted(set(VARIANTS) - {"depth_4", "augment_light"}))
def test_variant_builds_trains_and_logs(
    name: str, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datamodules: list[PersonDataModule] = []

    class RecordedDataModule(PersonDataModule):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            datamodules.append(self)

    monkeypatch.setattr(training_fit, "PersonDataModule", RecordedDataModule)
    (variant,) = [v for v in plan_variants(name, "default", TINY) if v.name == name]
    if variant.settings["encoder"] != "none":
        # Pretrained weights, tiny and from an offline cache: the fit's own path, no download.
        tiny_hub(monkeypatch, tmp_path / "hub")
    # What ablate hands this variant's train step gives the variant's config.
    training = TrainingParams(recipe=variant.recipe, changes=variant.settings)
    assert training.recipe_config() == variant.config
    runtime = RuntimeConfig(accelerator="cpu", num_workers=0, checkpoint_dir=str(tmp_path))
    with mlflow.start_run() as run, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        best, summary = training_fit.fit(
            variant.config, runtime, cache, run.info.run_id, seed=42, grid_every=5
        )
    architecture = best.net.config.to_dict()
    for setting in (
        "base_channels",
        "depth",
        "batch_norm",
        "skip_connections",
        "upsampling",
        "encoder",
    ):
        assert architecture[setting] == variant.settings[setting], setting
    assert best.hparams.loss == variant.settings["loss"]
    (datamodule,) = datamodules
    assert datamodule.augment == variant.settings["augment"]
    assert datamodule.batch_size == variant.settings["batch_size"]
    assert summary["epochs_trained"] == 1
    assert summary["parameters"] == sum(p.numel() for p in best.net.parameters())
    logged = MlflowClient().get_run(run.info.run_id).data.metrics
    assert {"train_loss_epoch", "val_loss", "val_dice", "lr"} <= set(logged)
    assert 0 <= logged["val_dice"] <= 1
