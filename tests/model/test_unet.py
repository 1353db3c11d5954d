"""The U-Net's shape contract, its paper-shaped blocks, gradients and torch.compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.model.blocks import DoubleConv, Down, Up
from pipeline.model.unet import NetworkConfig, UNet


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(
    ("height", "width", "depth"),
    [(37, 50, 4), (65, 33, 4), (37, 50, 5), (33, 65, 5), (17, 19, 3), (3, 5, 1)],
)
def test_odd_sizes_give_a_full_size_single_channel_output(
    height: int, width: int, depth: int
) -> None:
    model = UNet(NetworkConfig(base_channels=2, depth=depth))
    output = model(torch.rand(2, 3, height, width))
    assert output.shape == (2, 1, height, width)
    assert torch.isfinite(output).all()


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("base_channels", [2, 4, 8])
def test_depth_and_width_grid_on_tiny_inputs(depth: int, base_channels: int) -> None:
    side = 2**depth + 1  # the smallest odd side every level can pool
    model = UNet(NetworkConfig(base_channels=base_channels, depth=depth))
    output = model(torch.rand(1, 3, side, side + 2))
    assert output.shape == (1, 1, side, side + 2)
    assert len(model.encoder.downs) == depth
    assert len(model.decoder.ups) == depth


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_smallest_side_that_works_is_two_to_the_depth(depth: int) -> None:
    """Every level halves (floor) the size; a side below 2**depth pools a 1-pixel map to 0."""
    model = UNet(NetworkConfig(base_channels=2, depth=depth))
    side = 2**depth
    assert model(torch.rand(1, 3, side, side)).shape == (1, 1, side, side)
    with pytest.raises(RuntimeError, match="Output size is too small"):
        model(torch.rand(1, 3, side - 1, side))
    with pytest.raises(RuntimeError, match="Output size is too small"):
        model(torch.rand(1, 3, side, side - 1))


@pytest.mark.parametrize(("base_channels", "depth"), [(2, 1), (4, 3), (8, 5), (3, 4)])
def test_channel_widths_double_per_level(base_channels: int, depth: int) -> None:
    model = UNet(NetworkConfig(in_channels=3, base_channels=base_channels, depth=depth))
    assert model.encoder.inc.block[0].in_channels == 3
    assert model.encoder.inc.block[-2].out_channels == base_channels
    for level, down in enumerate(model.encoder.downs, start=1):
        assert down.conv.block[0].in_channels == base_channels * 2 ** (level - 1)
        assert down.conv.block[-2].out_channels == base_channels * 2**level
    bottleneck = model.encoder.downs[-1].conv.block[-2]
    assert bottleneck.out_channels == base_channels * 2**depth
    # The decoder mirrors the encoder: the first Up takes the bottleneck, the last one base.
    for index, up in enumerate(model.decoder.ups):
        level = depth - index
        assert up.up.in_channels == base_channels * 2**level
        assert up.up.out_channels == base_channels * 2 ** (level - 1)
        assert up.conv.block[-2].out_channels == base_channels * 2 ** (level - 1)
    assert model.outc.in_channels == base_channels
    assert model.outc.out_channels == 1


def test_in_channels_is_honoured() -> None:
    model = UNet(NetworkConfig(in_channels=1, base_channels=2, depth=2))
    assert model(torch.rand(1, 1, 8, 8)).shape == (1, 1, 8, 8)
    with pytest.raises(RuntimeError):
        model(torch.rand(1, 3, 8, 8))


def _assert_double_conv(block: nn.Module, in_channels: int, out_channels: int) -> None:
    assert isinstance(block, DoubleConv)
    layers = list(block.block)
    assert [type(layer) for layer in layers] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]
    first, second = layers[0], layers[2]
    for conv in (first, second):
        assert conv.kernel_size == (3, 3)
        assert conv.padding == (1, 1)
        assert conv.stride == (1, 1)
    assert (first.in_channels, first.out_channels) == (in_channels, out_channels)
    assert (second.in_channels, second.out_channels) == (out_channels, out_channels)


def test_blocks_are_the_papers() -> None:
    base, depth = 4, 3
    model = UNet(NetworkConfig(base_channels=base, depth=depth))
    _assert_double_conv(model.encoder.inc, 3, base)
    for level, down in enumerate(model.encoder.downs, start=1):
        assert isinstance(down, Down)
        assert isinstance(down.pool, nn.MaxPool2d)
        assert down.pool.kernel_size == 2
        assert down.pool.stride == 2
        _assert_double_conv(down.conv, base * 2 ** (level - 1), base * 2**level)
    for index, up in enumerate(model.decoder.ups):
        level = depth - index
        assert isinstance(up, Up)
        assert isinstance(up.up, nn.ConvTranspose2d)
        assert up.up.kernel_size == (2, 2)
        assert up.up.stride == (2, 2)
        # Concatenating the skip doubles the channels the DoubleConv then halves.
        _assert_double_conv(up.conv, base * 2**level, base * 2 ** (level - 1))
    assert isinstance(model.outc, nn.Conv2d)
    assert model.outc.kernel_size == (1, 1)
    assert model.outc.out_channels == 1


def test_up_pads_the_upsampled_map_to_the_skip() -> None:
    up = Up(8, 4)
    skip = torch.rand(1, 4, 7, 9)
    assert up(torch.rand(1, 8, 3, 4), skip).shape == (1, 4, 7, 9)


def test_forward_backward_gives_finite_gradients_everywhere() -> None:
    model = UNet(NetworkConfig(base_channels=4, depth=3))
    images = torch.rand(2, 3, 19, 23)
    target = (torch.rand(2, 1, 19, 23) > 0.5).float()
    loss = nn.functional.binary_cross_entropy_with_logits(model(images), target)
    loss.backward()
    total = 0.0
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        total += float(parameter.grad.abs().sum())
    assert total > 0


def test_compiled_graph_matches_eager() -> None:
    # Inductor needs ~20 s of C++ compilation on a 2-core CPU; aot_eager still traces the
    # whole graph through dynamo and AOTAutograd, which is what can break.
    model = UNet(NetworkConfig(base_channels=4, depth=2)).eval()
    images = torch.rand(2, 3, 21, 26)  # odd height: exercises the padding branch
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        eager = model(images)
        traced = compiled(images)
    assert traced.shape == (2, 1, 21, 26)
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth", [0, -1])
def test_invalid_depth_raises(depth: int) -> None:
    with pytest.raises(PipelineError, match=f"parameter depth={depth} must be at least 1"):
        NetworkConfig(depth=depth)


@pytest.mark.parametrize("base_channels", [0, -4])
def test_invalid_base_channels_raises(base_channels: int) -> None:
    with pytest.raises(PipelineError, match=f"base_channels={base_channels} must be at least 1"):
        NetworkConfig(base_channels=base_channels)


def test_unknown_upsampling_is_refused_by_the_config() -> None:
    with pytest.raises(PipelineError, match="upsampling='nearest' is not one of transposed"):
        NetworkConfig(upsampling="nearest")


SWITCHES = [
    {"batch_norm": True},
    {"skip_connections": False},
    {"upsampling": "bilinear"},
    {"batch_norm": True, "skip_connections": False, "upsampling": "bilinear"},
]


@pytest.mark.parametrize(
    "switches", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items())
)
def test_every_study_variant_runs_forward_backward_and_compiled(switches: dict) -> None:
    model = UNet(NetworkConfig(base_channels=4, depth=3, **switches))
    images = torch.rand(2, 3, 19, 23)
    output = model(images)
    assert output.shape == (2, 1, 19, 23)
    output.mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    model.eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images), rtol=1e-5, atol=1e-5)


def test_batch_norm_follows_each_convolution_which_drops_its_bias() -> None:
    block = DoubleConv(3, 8, batch_norm=True)
    kinds = [type(layer) for layer in block.block]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2
    convolutions = [layer for layer in block.block if isinstance(layer, nn.Conv2d)]
    assert all(conv.bias is None for conv in convolutions)
    plain = DoubleConv(3, 8)
    assert all(layer.bias is not None for layer in plain.block if isinstance(layer, nn.Conv2d))


def test_without_skip_connections_the_decoder_sees_only_upsampled_features() -> None:
    up = Up(8, 4, skip_connection=False)
    assert up.conv.block[0].in_channels == 4  # nothing concatenated
    skip = torch.rand(1, 4, 8, 8)
    below = torch.rand(1, 8, 4, 4)
    # The skip's content cannot change the output: only its size is used.
    torch.testing.assert_close(up(below, skip), up(below, torch.zeros_like(skip)))
    with_skip = Up(8, 4)
    assert with_skip.conv.block[0].in_channels == 8
    assert not torch.equal(with_skip(below, skip), with_skip(below, torch.zeros_like(skip)))


def test_bilinear_upsampling_interpolates_then_mixes_channels() -> None:
    up = Up(8, 4, upsampling="bilinear")
    upsample, mix = up.up
    assert isinstance(upsample, nn.Upsample)
    assert upsample.mode == "bilinear"
    assert isinstance(mix, nn.Conv2d)
    assert (mix.in_channels, mix.out_channels, mix.kernel_size) == (8, 4, (1, 1))
    assert not any(isinstance(layer, nn.ConvTranspose2d) for layer in up.modules())
    with pytest.raises(ValueError, match="upsampling must be one of"):
        Up(8, 4, upsampling="nearest")


@pytest.mark.parametrize("switches", SWITCHES)
def test_the_config_rebuilds_the_same_network(switches: dict) -> None:
    model = UNet(NetworkConfig(base_channels=3, depth=2, **switches))
    rebuilt = UNet(NetworkConfig.from_dict(model.config.to_dict()))
    rebuilt.load_state_dict(model.state_dict())
    images = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(rebuilt.eval()(images), model.eval()(images))
