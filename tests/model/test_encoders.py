"""U-Nets with a pretrained encoder, every offered one: the published architectures, forward and
backward at any size, compiled as eager, a fit from (tiny, offline) pretrained weights, logged
and served photo in, mask out in both runtimes; and clear messages when the weights or the
library are missing. No test downloads anything (tests/encoders.py)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import mlflow
import numpy as np
import onnxruntime
import pytest
import torch

from pipeline.data.datamodule import PersonDataModule
from pipeline.errors import PipelineError
from pipeline.export.onnx_export import IMAGES, spatial_multiple
from pipeline.model.encoders import (
    ENCODER_LEVELS,
    ENCODERS,
    NO_ENCODER,
    SPECS,
    PretrainedEncoder,
)
from pipeline.model.inputs import PixelNetwork
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.serving.segmenter import MODEL_CODE
from pipeline.tracking.code_paths import model_code_files
from pipeline.tracking.models import _requirements, load_predictor, segmenter_of
from pipeline.training.module import SegmentationModule
from pipeline.training.optimization import OptimizationConfig
from tests.encoders import (
    backbone_weights,
    classifier,
    offline_hub,
    put_in_cache,
    tiny_encoders,
    tiny_hub,
)
from tests.segmenters import log_model, photo_pixels
from tests.training.caches import write_cache

NAMES = [name for name in ENCODERS if name != NO_ENCODER]
# Parameters of each backbone as transformers builds it from SPECS: those of the published
# ImageNet models without their classifier (torchvision's resnet18/34/50 less fc; timm's
# convnext_tiny less head, plus the backbone's LayerNorm on each of its four outputs).
PUBLISHED_PARAMETERS = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "convnext-tiny": 28_589_128 - 769_000 - 1_536 + 2 * (96 + 192 + 384 + 768),
}
SIDE = 64  # 2 x 32: the smallest photo whose deepest features are more than one pixel


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_encoders(monkeypatch)


def tiny_net(name: str, pretrained: bool = False, **settings) -> UNet:
    torch.manual_seed(0)
    config = NetworkConfig(encoder=name, base_channels=4, batch_norm=True, **settings)
    return UNet(config, pretrained)


def trained_looking(net: UNet) -> UNet:
    """Batch-norm statistics that are not the identity, as after training, in eval mode."""
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
    return net.eval()


def test_every_offered_encoder_is_a_setting() -> None:
    assert set(NAMES) == set(SPECS) == {"resnet18", "resnet34", "resnet50", "convnext-tiny"}
    assert NetworkConfig().encoder == NO_ENCODER  # the paper's network stays the default
    with pytest.raises(PipelineError, match="encoder='resnet101' is not one of none, resnet18"):
        NetworkConfig(encoder="resnet101")
    with pytest.raises(PipelineError, match="encoder=resnet18 takes RGB photos"):
        NetworkConfig(encoder="resnet18", in_channels=1)


def test_config_round_trip_and_levels() -> None:
    config = NetworkConfig(encoder="convnext-tiny", base_channels=8)
    assert NetworkConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["encoder"] == "convnext-tiny"
    # Logged before encoders existed: the paper's encoder.
    older = {key: value for key, value in config.to_dict().items() if key != "encoder"}
    assert NetworkConfig.from_dict(older).encoder == NO_ENCODER
    assert (config.levels, NetworkConfig(depth=3).levels) == (ENCODER_LEVELS, 3)


@pytest.mark.parametrize("name", NAMES)
def test_the_backbone_is_the_published_architecture(name: str) -> None:
    """SPECS describe the Hub's models: as many weights as the published architectures, and
    features at strides 4 to 32 (that the Hub's weights fit is checked as they load)."""
    encoder = PretrainedEncoder(name, (4, 8))
    backbone_parameters = sum(p.numel() for p in encoder.backbone.parameters())
    assert backbone_parameters == PUBLISHED_PARAMETERS[name]
    with torch.no_grad():
        features = encoder(torch.rand(1, 3, SIDE, SIDE))
    # The paper's first two levels, then the backbone's four: every level, finest first.
    assert [tuple(f.shape[1:]) for f in features] == [
        (channels, SIDE // stride, SIDE // stride)
        for channels, stride in zip(encoder.channels, (1, 2, 4, 8, 16, 32), strict=True)
    ]
    assert encoder.channels[:2] == (4, 8)


@pytest.mark.usefixtures("tiny")
@pytest.mark.parametrize("name", NAMES)
def test_forward_at_any_size_and_gradients_everywhere(name: str) -> None:
    net = tiny_net(name)
    for height, width in ((SIDE, SIDE), (50, 71)):
        assert net(torch.rand(2, 3, height, width)).shape == (2, 1, height, width)
    loss = net(torch.rand(2, 3, SIDE, SIDE)).square().mean()
    loss.backward()
    for part in (net.encoder, net.decoder, net.outc):
        for parameter_name, parameter in part.named_parameters():
            assert parameter.grad is not None, parameter_name
            assert torch.isfinite(parameter.grad).all(), parameter_name
    assert any(p.grad.abs().sum() > 0 for p in net.encoder.backbone.parameters())


@pytest.mark.usefixtures("tiny")
def test_without_skips_the_first_levels_are_left_out() -> None:
    net = tiny_net("resnet18", skip_connections=False, upsampling="bilinear")
    assert isinstance(net.encoder.inc, torch.nn.Identity) and len(net.encoder.downs) == 0
    assert net.encoder.channels[:2] == (0, 0)  # maps of no channels: their sizes alone
    assert net(torch.rand(1, 3, 45, 64)).shape == (1, 1, 45, 64)
    net(torch.rand(1, 3, SIDE, SIDE)).mean().backward()
    assert all(p.grad is not None for p in net.parameters())  # none unused (DDP would refuse)


@pytest.mark.usefixtures("tiny")
def test_the_normalisation_is_inside_the_network_and_not_a_weight() -> None:
    net = trained_looking(tiny_net("resnet18"))
    photos = torch.rand(2, 3, SIDE, SIDE)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        features = net.encoder(photos)[2:]
        expected = net.encoder.backbone((photos - mean) / std).feature_maps
    for got, want in zip(features, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert {"encoder.mean", "encoder.std"}.isdisjoint(net.state_dict())
    rebuilt = UNet(NetworkConfig.from_dict(net.config.to_dict()))
    rebuilt.load_state_dict(net.state_dict())  # strict: the same layers, nothing left over
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(photos), net(photos), rtol=0, atol=0)


@pytest.mark.usefixtures("tiny")
@pytest.mark.parametrize("name", NAMES)
def test_compiled_forward_matches_eager(name: str) -> None:
    net = trained_looking(tiny_net(name))
    photos = torch.rand(2, 3, SIDE, SIDE)
    compiled = torch.compile(net, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(photos), net(photos), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_fits_from_the_pretrained_weights(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = tiny_hub(monkeypatch, tmp_path / "hub")
    net = tiny_net(name, pretrained=True)
    assert net.training
    loaded = net.encoder.backbone.state_dict()
    for key, value in backbone_weights(name, checkpoints[name]).items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    before = {key: value.clone() for key, value in net.state_dict().items()}

    (tmp_path / "cache").mkdir()
    cache = write_cache(tmp_path / "cache", side=SIDE)
    module = SegmentationModule(net, "bce_dice", OptimizationConfig(optimizer="adamw", lr=1e-3))
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    datamodule = PersonDataModule(cache, batch_size=2, num_workers=0, pin_memory=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train_loss_epoch"])
    after = net.state_dict()
    for part in ("encoder.backbone.", "decoder.ups.", "outc."):
        assert any(
            not torch.equal(before[key], after[key])
            for key in before
            if key.startswith(part) and before[key].is_floating_point()
        ), f"{part} did not train"


@pytest.mark.usefixtures("tiny")
@pytest.mark.parametrize("name", NAMES)
def test_logged_model_serves_the_networks_logits_in_both_runtimes(name: str) -> None:
    net = trained_looking(tiny_net(name))
    model_uri = log_model(net, image_size=SIDE, onnx=True)
    pixels = np.stack([photo_pixels((SIDE, SIDE), seed) for seed in (1, 2)])
    with torch.no_grad():
        expected = PixelNetwork(net)(torch.from_numpy(pixels).permute(0, 3, 1, 2))

    torch_model = mlflow.pyfunc.load_model(model_uri)
    segmenter = segmenter_of(torch_model, model_uri)
    assert segmenter.net.config == net.config
    torch.testing.assert_close(segmenter.logits(pixels), expected, rtol=0, atol=0)
    onnx_segmenter = segmenter_of(load_predictor(model_uri, "onnx"), model_uri)
    torch.testing.assert_close(onnx_segmenter.logits(pixels), expected, rtol=1e-4, atol=1e-4)

    model_dir = Path(mlflow.artifacts.download_artifacts(model_uri))
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert any(line.startswith("transformers==") for line in requirements)
    assert (model_dir / "code" / "pipeline" / "model" / "encoders.py").is_file()
    # The export takes any multiple of 32 for height and width, not only image_size.
    (onnx_file,) = (model_dir / "artifacts").glob("*.onnx")
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    photos = torch.randint(0, 256, (1, 3, 96, SIDE), dtype=torch.uint8)
    (logits,) = session.run(None, {IMAGES: photos.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, PixelNetwork(net)(photos).numpy(), atol=1e-4)
    assert spatial_multiple(net) == 32


def test_requirements_and_code_follow_the_encoder() -> None:
    assert not any("transformers" in line for line in _requirements(NetworkConfig()))
    (pin,) = [
        line for line in _requirements(NetworkConfig(encoder="resnet34")) if "transformers" in line
    ]
    assert pin.startswith("transformers==")
    assert Path("model/encoders.py") in model_code_files(MODEL_CODE)


def test_offline_without_the_weights_says_which_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline_hub(monkeypatch, tmp_path / "empty-hub")
    with pytest.raises(PipelineError) as raised:
        UNet(NetworkConfig(encoder="resnet34"), pretrained=True)
    message = str(raised.value)
    assert "encoder=resnet34, microsoft/resnet-34 on the Hugging Face Hub" in message
    assert str(tmp_path / "empty-hub") in message
    assert "connect this machine to the internet" in message
    assert "HF_HOME" in message and "--encoder none" in message
    UNet(NetworkConfig(encoder="resnet34"))  # random weights: nothing to download


@pytest.mark.usefixtures("tiny")
def test_weights_of_another_architecture_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transformers only warns of layers it left random, and of shapes unless told: both stop."""
    hub = tmp_path / "hub"
    offline_hub(monkeypatch, hub)
    for other in ({"depths": [2, 1, 1, 1]}, {"hidden_sizes": [8, 16, 24, 40]}):
        put_in_cache(hub, "microsoft/resnet-18", classifier("resnet18", **other))
        with pytest.raises(PipelineError, match="weights of microsoft/resnet-18 do not fit"):
            UNet(NetworkConfig(encoder="resnet18"), pretrained=True)


def test_without_the_library_the_message_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an uninstalled one raises
    with pytest.raises(PipelineError, match=r"pip install -e '\.\[encoders\]'.*--encoder none"):
        UNet(NetworkConfig(encoder="resnet18"))


def test_the_paper_network_never_imports_the_library() -> None:
    probe = (
        "import sys\n"
        "from pipeline.model.unet import UNet\n"
        "import pipeline.serving.segmenter, pipeline.study.variants\n"
        "UNet()\n"
        "print(sorted(m for m in ('transformers', 'huggingface_hub') if m in sys.modules))\n"
    )
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=True
    )
    assert found.stdout.strip() == "[]"
