"""The GPU path's settings: how `auto` resolves, what is refused before any run opens, and a
real fit with the network compiled (aot_eager, which needs no compiler) in NHWC layout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch._dynamo.utils import counters

from pipeline.entrypoints import train
from pipeline.errors import PipelineError
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.params import parse
from pipeline.tracking.models import load_predictor
from pipeline.tracking.tags import MODEL_URI_TAG
from pipeline.training.module import SegmentationModule
from pipeline.training.runtime import RuntimeConfig, compile_options, compile_tag, resolve_hardware
from pipeline.training_params import TrainParams
from tests.conftest import last_run
from tests.training.caches import write_finished_cache


def test_auto_settings_are_off_on_a_cpu() -> None:
    hardware = resolve_hardware(RuntimeConfig(accelerator="cpu"))
    assert (hardware.channels_last, hardware.cudnn_benchmark, hardware.compile) == (
        False,
        False,
        None,
    )
    assert hardware.num_workers == 0


def test_auto_settings_on_a_cuda_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.multiprocessing, "cpu_count", lambda: 32)
    hardware = resolve_hardware(RuntimeConfig())
    assert hardware.channels_last and hardware.cudnn_benchmark
    assert hardware.precision == "bf16-mixed"
    assert hardware.num_workers == 4  # half the cores, shared by the node's 4 processes
    assert resolve_hardware(RuntimeConfig(devices="1")).num_workers == 8  # at most 8
    off = resolve_hardware(RuntimeConfig(channels_last="false", cudnn_benchmark="false"))
    assert not off.channels_last and not off.cudnn_benchmark


@pytest.mark.parametrize(
    ("value", "options", "tag"),
    [
        ("false", None, "false"),
        ("true", {"backend": "inductor", "mode": "default"}, "inductor:default"),
        ("max-autotune", {"backend": "inductor", "mode": "max-autotune"}, "inductor:max-autotune"),
        ("aot_eager", {"backend": "aot_eager"}, "aot_eager"),
    ],
)
def test_compile_values(value: str, options: dict | None, tag: str) -> None:
    assert compile_options(value) == options
    assert compile_tag(options) == tag


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--compile", "fast"], "parameter compile='fast' is not false, true, a torch.compile"),
        (["--channels_last", "maybe"], "parameter channels_last='maybe' is not auto, true or"),
        (["--cudnn_benchmark", "2"], "parameter cudnn_benchmark='2' is not auto, true or false"),
        (["--strategy", "ddp_spawn"], "parameter strategy='ddp_spawn' is not one of auto, ddp"),
        (["--num_nodes", "0"], "parameter num_nodes=0 must be at least 1"),
    ],
)
def test_bad_values_are_refused_as_parsed(argv: list[str], message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        parse(TrainParams, argv)


@pytest.mark.e2e
def test_a_compiled_channels_last_fit_trains_and_logs_the_plain_unet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    cache = write_finished_cache(tmp_path / "cache", 32, {"train": 16, "val": 5, "test": 2})
    settings = {
        "data_dir": str(cache), "checkpoint_dir": str(tmp_path / "checkpoints"),
        "recipe": "paper", "base_channels": "4", "depth": "2", "batch_norm": "true",
        "loss": "bce_dice", "lr": "0.05", "batch_size": "2", "max_epochs": "3",
        "accelerator": "cpu", "devices": "1", "num_workers": "0",
        "compile": "aot_eager", "channels_last": "true", "cudnn_benchmark": "true",
    }  # fmt: skip
    counters.clear()
    try:
        assert (
            train.main([word for name, value in settings.items() for word in (f"--{name}", value)])
            == 0
        )
        # Forward and backward graphs went through the compiler (AOT autograd), not eager.
        assert counters["aot_autograd"]["total"] >= 1
    finally:
        torch._dynamo.reset()
    run = last_run()
    tags = run.data.tags
    assert tags["unet_person.compile"] == "aot_eager"
    assert tags["unet_person.channels_last"] == "true"
    assert tags["unet_person.cudnn_benchmark"] == "true"
    losses = MlflowClient().get_metric_history(run.info.run_id, "train_loss_epoch")
    assert losses[-1].value < losses[0].value
    assert run.data.metrics["best_val_dice"] > 0.5

    # Compiled in place: the checkpoint's keys are the plain module's, and the logged network
    # is a plain UNet (the Segmenter loads its weights strictly) equal to the best checkpoint's.
    checkpoint = tmp_path / "checkpoints" / run.info.run_id / "best.ckpt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert all(key.startswith("net.") and "_orig_mod" not in key for key in state)
    logged = load_predictor(tags[MODEL_URI_TAG]).unwrap_python_model().net
    assert type(logged) is UNet and logged._compiled_call_impl is None
    best = SegmentationModule.from_checkpoint(checkpoint).net
    fresh = UNet(NetworkConfig.from_dict(logged.config.to_dict()))
    fresh.load_state_dict(best.state_dict())
    for key, value in logged.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
