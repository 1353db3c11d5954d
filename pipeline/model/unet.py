"""U-Net (Ronneberger et al., 2015) built from blocks named after the paper's figure.

The paper's network is the default. Three switches exist for the architecture study
(`ablate`): batch normalisation after each convolution, skip connections, and bilinear
upsampling in place of the transposed convolution. A fourth setting, `encoder`, replaces the
encoder's levels below the first by a backbone pretrained on ImageNet (pipeline/model/encoders.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.model.encoders import ENCODER_LEVELS, ENCODERS, NO_ENCODER, Encoder
from pipeline.settings import check_settings, one_of, setting

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


@dataclass(frozen=True)
class NetworkConfig:
    """The network's settings, the paper's by default: what a UNet is built from, and what a
    logged model keeps beside its weights to build it again."""

    base_channels: int = setting(
        64,
        "width of the first U-Net level",
        minimum=1,
        search=one_of(
            16, 32, 64, why="the paper's 64 and the study's halvings: width buys Dice with time"
        ),
    )
    depth: int = setting(
        4, "number of down-sampling levels (of the paper's encoder: an encoder has 5)", minimum=1
    )
    batch_norm: bool = setting(False, "batch normalisation after each convolution")
    skip_connections: bool = setting(True, "encoder-to-decoder skip connections")
    upsampling: str = setting("transposed", "transposed or bilinear", choices=UPSAMPLING_MODES)
    encoder: str = setting(
        NO_ENCODER,
        "none (the paper's encoder) or an ImageNet-pretrained backbone below the first level: "
        + ", ".join(ENCODERS[1:])
        + " (Hugging Face transformers, the optional extra `encoders`)",
        choices=ENCODERS,
    )
    in_channels: int = 3  # RGB photos; not a setting

    def __post_init__(self) -> None:
        check_settings(self)
        if self.encoder != NO_ENCODER and self.in_channels != 3:
            raise PipelineError(
                f"encoder={self.encoder} takes RGB photos, not {self.in_channels} channels"
            )

    @property
    def levels(self) -> int:
        """Down-sampling levels: `depth`, or with an encoder the backbone's 5 (stride 32)."""
        return self.depth if self.encoder == NO_ENCODER else ENCODER_LEVELS

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

    With an `encoder`, the first level and its Down block stay (full-resolution features for
    the finest skip), and the backbone gives the four levels below it (strides 4 to 32); the
    decoder is the paper's, of the same widths, and takes the backbone's features as skips.
    The backbone's input normalisation is inside the network, so it takes [0, 1] photos like
    the paper's. `pretrained` loads the backbone's ImageNet weights (what training starts
    from); without it the weights are random, for a state_dict to be loaded into.
    """

    def __init__(self, config: NetworkConfig | None = None, pretrained: bool = False) -> None:
        super().__init__()
        self.config = config = config or NetworkConfig()
        if config.encoder != NO_ENCODER:
            self._build_with_encoder(config, pretrained)
            return
        self.encoder: Encoder | None = None
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

    def _build_with_encoder(self, config: NetworkConfig, pretrained: bool) -> None:
        batch_norm, skips = config.batch_norm, config.skip_connections
        self.encoder = Encoder(config.encoder, pretrained)
        widths = [config.base_channels * 2**level for level in range(ENCODER_LEVELS)]
        # The skips' widths by level: the first two levels' own, then the backbone's.
        skip_widths = [widths[0], widths[1], *self.encoder.channels]
        # Without skips the first two levels would feed nothing, so there are none.
        self.inc = DoubleConv(config.in_channels, widths[0], batch_norm) if skips else None
        self.downs = nn.ModuleList([Down(widths[0], widths[1], batch_norm)] if skips else [])
        self.ups = nn.ModuleList(
            Up(
                skip_widths[i + 1] if i == ENCODER_LEVELS - 1 else widths[i + 1],
                widths[i],
                batch_norm,
                skips,
                config.upsampling,
                skip_channels=skip_widths[i],
            )
            for i in reversed(range(ENCODER_LEVELS))
        )
        self.outc = nn.Conv2d(widths[0], 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:
            return self._forward_with_encoder(x)
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()  # the bottleneck
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)

    def _forward_with_encoder(self, x: torch.Tensor) -> torch.Tensor:
        x = self.encoder.normalise(x)
        if self.inc is not None:
            skips = [self.inc(x)]
            skips.append(self.downs[0](skips[0]))
        else:
            # No skips: only their sizes count (Up lines its output up with them), which
            # empty slices of the photo carry.
            skips = [x[:, :0], x[:, :0, ::2, ::2]]
        skips += self.encoder(x)
        x = skips.pop()  # the backbone's last stage
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)
