"""U-Net (Ronneberger et al., 2015) built from blocks named after the paper's figure.

The paper's network is the default. Three switches exist for the architecture study
(`ablate`): batch normalisation after each convolution, skip connections, and bilinear
upsampling in place of the transposed convolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.settings import check_settings, setting

Upsampling = Literal["transposed", "bilinear"]
UPSAMPLING_MODES: tuple[str, ...] = ("transposed", "bilinear")


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
    connection the decoder sees only the upsampled coarse features.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        batch_norm: bool = False,
        skip_connection: bool = True,
        upsampling: Upsampling = "transposed",
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
        joined = out_channels * 2 if skip_connection else out_channels
        self.conv = DoubleConv(joined, out_channels, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        # Odd sizes lose a row or column to pooling; pad back so the skip lines up.
        dy = skip.shape[-2] - x.shape[-2]
        dx = skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        if self.skip_connection:
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


@dataclass(frozen=True)
class NetworkConfig:
    """The network's settings, the paper's by default: what a UNet is built from, and what a
    logged model keeps beside its weights to build it again."""

    base_channels: int = setting(64, "width of the first U-Net level", minimum=1)
    depth: int = setting(4, "number of down-sampling levels", minimum=1)
    batch_norm: bool = setting(False, "batch normalisation after each convolution")
    skip_connections: bool = setting(True, "encoder-to-decoder skip connections")
    upsampling: str = setting("transposed", "transposed or bilinear", choices=UPSAMPLING_MODES)
    in_channels: int = 3  # RGB photos; not a setting

    def __post_init__(self) -> None:
        check_settings(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NetworkConfig:
        """The config a logged model stored, ignoring its other keys (such as image_size)."""
        names = {spec.name for spec in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in names})


class UNet(nn.Module):
    """Encoder of `depth` Down blocks, a bottleneck, and a mirrored decoder; one logit channel.

    `base_channels` is the width of the first level; each level below doubles it.
    """

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or NetworkConfig()
        base_channels, depth, batch_norm = config.base_channels, config.depth, config.batch_norm
        in_channels = config.in_channels
        skip_connections, upsampling = config.skip_connections, config.upsampling
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.inc = DoubleConv(in_channels, widths[0], batch_norm)
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1], batch_norm) for i in range(depth))
        self.ups = nn.ModuleList(
            Up(widths[i + 1], widths[i], batch_norm, skip_connections, upsampling)
            for i in reversed(range(depth))
        )
        self.outc = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()  # the bottleneck
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)
