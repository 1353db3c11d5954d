"""The blocks of the U-Net's figure (Ronneberger et al., 2015): two 3x3 convolutions, a step
down the contracting path, a step up the expansive one."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

Upsampling = Literal["transposed", "bilinear"]
UPSAMPLING_MODES: tuple[str, ...] = get_args(Upsampling)


class DoubleConv(nn.Module):
    """Two 3x3 convolutions with ReLU: the unit every U-Net level is made of.

    Padding keeps the spatial size, so skip connections line up without cropping. With batch
    normalisation the convolutions drop their bias, which the normalisation would cancel.
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for channels_in in (in_channels, out_channels):
            layers.append(
                nn.Conv2d(channels_in, out_channels, kernel_size=3, padding=1, bias=not batch_norm)
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Down(nn.Module):
    """2x2 max-pooling, then a DoubleConv that doubles the channels."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_channels, out_channels, batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Up(nn.Module):
    """Upsampling that halves the channels, concatenation with the skip, then a DoubleConv.

    `transposed` is the paper's learned 2x2 up-convolution; `bilinear` interpolates and mixes
    channels with a 1x1 convolution (fewer weights, no checkerboard artefacts). Without the skip
    connection the decoder sees only the upsampled coarse features. The skip has `out_channels`
    channels unless `skip_channels` says otherwise (a pretrained encoder's features).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        batch_norm: bool = False,
        skip_connection: bool = True,
        upsampling: Upsampling = "transposed",
        skip_channels: int | None = None,
    ) -> None:
        super().__init__()
        if upsampling == "transposed":
            self.up: nn.Module = nn.ConvTranspose2d(
                in_channels, out_channels, kernel_size=2, stride=2
            )
        elif upsampling == "bilinear":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, out_channels, kernel_size=1),
            )
        else:
            raise ValueError(f"upsampling must be one of {UPSAMPLING_MODES}, got {upsampling!r}")
        self.skip_connection = skip_connection
        skip_width = out_channels if skip_channels is None else skip_channels
        joined = out_channels + skip_width if skip_connection else out_channels
        self.conv = DoubleConv(joined, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        # Odd sizes lose a row or column to pooling, or gain one in a strided convolution; pad
        # (or crop) so that the skip lines up.
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        if self.skip_connection:
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)
