"""The ONNX export: every U-Net the architecture study can build exports, takes any batch size
and any height and width its depth allows, and answers as PyTorch does in ONNX Runtime (CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.export import DEFAULT_OPSET, check_opset
from pipeline.export.onnx_export import IMAGES, LOGITS, export_onnx
from pipeline.model.inputs import PixelNetwork
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.serving.parity import MIN_MASK_AGREEMENT, check_photos, onnx_parity
from pipeline.study.variants import plan_variants

IMAGE_SIZE = 32  # a multiple of 2**5, so every depth the study tries has free height and width


def study_architectures() -> list[dict]:
    """Every network shape the study's variants of both recipes give, at one small width (the
    width variants change channel counts, not the graph)."""
    shapes = {}
    for recipe in ("default", "paper"):
        for variant in plan_variants("all", recipe, {}):
            network = variant.config.network
            shape = {
                "depth": network.depth,
                "batch_norm": network.batch_norm,
                "skip_connections": network.skip_connections,
                "upsampling": network.upsampling,
            }
            shapes[tuple(shape.values())] = shape
    return list(shapes.values())


ARCHITECTURES = study_architectures()


def trained_looking(seed: int = 0, **shape) -> UNet:
    """A U-Net 4 channels wide, random but alive: BN statistics that are not the identity,
    biases that keep ReLUs open, and the output bias near the median logit, so masks have both
    classes to get wrong."""
    torch.manual_seed(seed)
    net = UNet(NetworkConfig(base_channels=4, **shape))
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(0.0, 0.3)  # keeps ReLUs alive in a net this narrow
        elif isinstance(module, torch.nn.Conv2d) and module.bias is not None:
            module.bias.data.uniform_(0.0, 0.1)  # the same without batch norm
    net.eval()
    with torch.no_grad():
        logits = PixelNetwork(net)(torch.from_numpy(check_photos(2, IMAGE_SIZE, IMAGE_SIZE, 9)))
        # Just off the median: a plateau of equal logits (dead ReLUs) must not sit on 0.
        net.outc.bias -= logits.median() + 1e-3 * logits.std()
    return net


def test_the_study_covers_every_switch() -> None:
    assert {shape["depth"] for shape in ARCHITECTURES} == {3, 4, 5}
    assert {shape["batch_norm"] for shape in ARCHITECTURES} == {True, False}
    assert {shape["skip_connections"] for shape in ARCHITECTURES} == {True, False}
    assert {shape["upsampling"] for shape in ARCHITECTURES} == {"transposed", "bilinear"}


@pytest.mark.parametrize(
    "shape", ARCHITECTURES, ids=lambda shape: "-".join(str(value) for value in shape.values())
)
def test_every_study_architecture_exports_and_answers_as_pytorch(
    shape: dict, tmp_path: Path
) -> None:
    net = trained_looking(**shape)
    path = export_onnx(net, IMAGE_SIZE, tmp_path / "unet.onnx")
    multiple = 2 ** shape["depth"]

    model = onnx.load(path)
    assert model.opset_import[0].version == DEFAULT_OPSET
    (images,) = model.graph.input
    dims = [dim.dim_param or dim.dim_value for dim in images.type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(dim, str) for dim in (dims[0], dims[2], dims[3]))
    assert images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].name == LOGITS

    # The size the Segmenter feeds, and others of other batch sizes and aspect ratios.
    for count, height, width in ((1, IMAGE_SIZE, IMAGE_SIZE), (3, 2 * multiple, 5 * multiple)):
        photos = check_photos(count, height, width, seed=height + width)
        parity = onnx_parity(net, path, photos)
        assert parity.holds, (count, height, width, parity)
        assert parity.mask_agreement >= MIN_MASK_AGREEMENT
        got = onnxruntime.InferenceSession(str(path)).run(None, {IMAGES: photos})[0]
        assert got.shape == (count, 1, height, width)
        assert 0.05 < np.mean(got > 0) < 0.95  # both classes, so agreement means something


def test_an_image_size_off_the_depths_grid_exports_at_that_size(tmp_path: Path) -> None:
    """36 px at depth 3 pads inside the decoder: the graph is fixed at 36 x 36, batch free."""
    net = trained_looking(depth=3)
    path = export_onnx(net, 36, tmp_path / "unet.onnx")
    (images,) = onnx.load(path).graph.input
    dims = [dim.dim_param or dim.dim_value for dim in images.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [3, 36, 36]
    assert onnx_parity(net, path, check_photos(2, 36, 36)).holds


def test_the_file_says_how_to_call_it(tmp_path: Path) -> None:
    net = UNet(NetworkConfig(base_channels=2, depth=3, batch_norm=True)).eval()
    path = export_onnx(net, IMAGE_SIZE, tmp_path / "unet.onnx", opset=18)
    model = onnx.load(path)
    assert model.opset_import[0].version == 18
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert metadata["unet_person.image_size"] == str(IMAGE_SIZE)
    assert metadata["unet_person.height_and_width"] == "any multiple of 8"
    assert '"batch_norm": true' in metadata["unet_person.architecture"]
    assert onnx_parity(net, path, check_photos(1, IMAGE_SIZE, IMAGE_SIZE)).holds
    assert net.training is False  # the export leaves the network's mode as it found it


def test_parity_fails_for_another_network(tmp_path: Path) -> None:
    net = trained_looking(depth=3)
    path = export_onnx(net, IMAGE_SIZE, tmp_path / "unet.onnx")
    other = trained_looking(seed=1, depth=3)
    assert not onnx_parity(other, path, check_photos(1, IMAGE_SIZE, IMAGE_SIZE)).holds


@pytest.mark.parametrize("opset", [17, 24])
def test_an_opset_the_exporter_does_not_write_is_named(opset: int) -> None:
    with pytest.raises(PipelineError, match=rf"parameter opset={opset} .* use 18 to 23"):
        check_opset(opset)
