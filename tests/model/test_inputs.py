"""The network's input contract: photo bytes to [0, 1] floats, leaving the caller's data alone."""

from __future__ import annotations

import pytest
import torch

from pipeline.model.inputs import PixelNetwork, to_model_input


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_a_float_input_is_left_unchanged(dtype: torch.dtype) -> None:
    images = torch.tensor([0.0, 51.0, 255.0], dtype=dtype).reshape(1, 3, 1, 1)
    before = images.clone()
    scaled = to_model_input(images)
    assert torch.equal(images, before)  # once divided in place by 255
    assert scaled.dtype == torch.float32
    assert scaled.data_ptr() != images.data_ptr()
    assert scaled.flatten().tolist() == pytest.approx([0.0, 0.2, 1.0])


def test_a_uint8_input_is_left_unchanged() -> None:
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 3, 1, 1)
    scaled = to_model_input(images)
    assert images.flatten().tolist() == [0, 51, 255]
    assert scaled.dtype == torch.float32
    assert scaled.flatten().tolist() == pytest.approx([0.0, 0.2, 1.0])


def test_the_pixel_network_leaves_a_float_batch_alone() -> None:
    images = torch.full((1, 3, 2, 2), 255.0)
    PixelNetwork(torch.nn.Identity())(images)
    assert torch.equal(images, torch.full((1, 3, 2, 2), 255.0))
