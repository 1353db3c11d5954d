"""The trained U-Net as an ONNX file, for runtimes without PyTorch or MLflow (ONNX Runtime,
TensorRT, a browser, a phone).

The graph takes what the Segmenter's network takes, uint8 RGB photos N x 3 x H x W (0-255), and
returns logits N x 1 x H x W: the division by 255 travels inside it (`PixelNetwork`), so a
deployer cannot feed it wrongly scaled floats. A pixel is person where its logit is above 0
(P > 0.5). Batch size is free; so are height and width, as multiples of 2**levels (2**depth,
or 32 with a pretrained encoder: each level halves them, and only then do the skips line up
without the padding that would fix the size in the graph). A network whose image_size is no
such multiple is exported at image_size.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch.export import Dim

from pipeline.export import DEFAULT_OPSET, check_opset
from pipeline.model.inputs import PixelNetwork
from pipeline.model.unet import UNet

IMAGES = "images"
LOGITS = "logits"
# The exporter lists the torchvision operators it cannot register when torchvision is absent.
EXPORTER_LOGGER = "torch.onnx._internal.exporter._registration"


def spatial_multiple(net: UNet) -> int:
    """The step height and width take in the exported graph: 2**levels."""
    return 2**net.config.levels


def export_onnx(net: UNet, image_size: int, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write `net` (on the CPU, in eval mode for the export) to `path` as one .onnx file.

    The file's metadata carries the architecture, image_size and the input contract, so the
    file alone says how to call it.
    """
    check_opset(opset)
    multiple = spatial_multiple(net)
    dynamic = {0: Dim("batch", min=1)}
    if image_size % multiple == 0:
        side = (2 * multiple, 3 * multiple)  # blocks of 1 would be fixed as constants
        dynamic |= {2: multiple * Dim("height_blocks"), 3: multiple * Dim("width_blocks")}
        sizes = f"any multiple of {multiple}"
    else:
        side = (image_size, image_size)
        sizes = f"{image_size} only"
    example = torch.zeros((2, 3, *side), dtype=torch.uint8)
    was_training = net.training
    module = PixelNetwork(net.cpu()).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            logging.getLogger(EXPORTER_LOGGER).setLevel(logging.ERROR)
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=[IMAGES],
                output_names=[LOGITS],
                dynamic_shapes={IMAGES: dynamic},
                opset_version=opset,
                verbose=False,
            )
    finally:
        net.train(was_training)
    program.model.metadata_props.update(
        {
            "unet_person.architecture": json.dumps(net.config.to_dict()),
            "unet_person.image_size": str(image_size),
            "unet_person.height_and_width": sizes,
            "unet_person.input": "images: uint8 RGB N x 3 x H x W, 0-255; the photo resized "
            "to image_size x image_size (bilinear) as in training",
            "unet_person.output": "logits: float32 N x 1 x H x W; person where logit > 0",
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)
    return path
