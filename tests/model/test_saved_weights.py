"""Weights saved by the U-Net before its encoders shared one interface load, and give the same
logits: models logged and checkpoints written then still serve and resume.

data/unet_layout_v1.pt was written by that code (commit 694e706): tiny networks of the paper's
encoder, its study switches and a pretrained backbone with and without skips, each built with
seed 1, with its state_dict (flattened) and its logits for one photo.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from pipeline.model import encoders
from pipeline.model.unet import NetworkConfig, UNet

SAVED = torch.load(Path(__file__).parent / "data" / "unet_layout_v1.pt", weights_only=True)
NETWORKS = [key for key, value in SAVED.items() if isinstance(value, dict) and "keys" in value]


def earlier_state_dict(saved: dict) -> dict[str, torch.Tensor]:
    values, state = saved["values"], {}
    for key, shape, dtype in zip(saved["keys"], saved["shapes"], saved["dtypes"], strict=True):
        count = int(torch.Size(shape).numel())
        state[key] = values[:count].reshape(shape).to(getattr(torch, dtype.split(".")[1]))
        values = values[count:]
    return state


@pytest.fixture(autouse=True)
def _backbones_as_saved(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = encoders.SPECS["resnet18"]
    settings = {**spec.settings, **SAVED["encoder_settings"]}
    monkeypatch.setitem(encoders.SPECS, "resnet18", dataclasses.replace(spec, settings=settings))


def test_the_file_holds_every_kind_of_network() -> None:
    assert set(NETWORKS) == {
        "paper", "batch_norm_bilinear", "no_skips", "resnet18", "resnet18_no_skips"
    }  # fmt: skip
    assert any(key.startswith("inc.") for key in SAVED["paper"]["keys"])  # the earlier names


# The saved logits came from an AMD CPU; an Intel one's oneDNN kernels sum in another order and
# differ by ~3e-8. A weight in the wrong place moves them by tenths.
SAME_LOGITS = {"rtol": 1e-5, "atol": 1e-6}


@pytest.mark.parametrize("name", NETWORKS)
def test_earlier_weights_load_strictly_and_give_the_same_logits(name: str) -> None:
    saved = SAVED[name]
    net = UNet(NetworkConfig(**saved["settings"])).eval()
    net.load_state_dict(earlier_state_dict(saved))  # strict: every weight has its place
    with torch.no_grad():
        torch.testing.assert_close(net(SAVED["photo"]), saved["logits"], **SAME_LOGITS)


@pytest.mark.parametrize("name", NETWORKS)
def test_a_seed_gives_the_weights_it_gave_before(name: str) -> None:
    """The same initialisation order: a seeded fit starts where it started before."""
    saved = SAVED[name]
    torch.manual_seed(1)
    fresh = UNet(NetworkConfig(**saved["settings"]))
    loaded = UNet(NetworkConfig(**saved["settings"]))
    loaded.load_state_dict(earlier_state_dict(saved))
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, loaded.state_dict()[key], rtol=0, atol=0, msg=key)


def test_weights_nested_in_a_module_load_under_its_prefix() -> None:
    """Lightning's checkpoints hold the network as `net.`: the renaming keeps the prefix."""
    saved = SAVED["paper"]
    holder = torch.nn.Module()
    holder.net = UNet(NetworkConfig(**saved["settings"]))
    holder.load_state_dict({f"net.{k}": v for k, v in earlier_state_dict(saved).items()})
    with torch.no_grad():
        logits = holder.net.eval()(SAVED["photo"])
    torch.testing.assert_close(logits, saved["logits"], **SAME_LOGITS)
