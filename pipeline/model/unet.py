"""U-Net (Ronneberger et al., 2015): an encoder, the decoder and a 1x1 convolution to one logit.

The paper's network is the default. Three switches exist for the architecture study
(`ablate`): batch normalisation after each convolution, skip connections, and bilinear
upsampling in place of the transposed convolution. A fourth setting, `encoder`, replaces the
encoder's levels below the second by a backbone pretrained on ImageNet; either encoder gives
the decoder the features of every level (pipeline/model/encoders.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.model.blocks import UPSAMPLING_MODES, Up, Upsampling
from pipeline.model.encoders import (
    ENCODER_LEVELS,
    ENCODERS,
    NO_ENCODER,
    Encoder,
    PaperEncoder,
    PretrainedEncoder,
)
from pipeline.settings import check_settings, one_of, setting

# Weights saved before the encoders shared one interface (models logged, checkpoints written)
# had the encoder's first levels and the decoder's blocks at the top: their new places.
EARLIER_NAMES = {"inc.": "encoder.inc.", "downs.": "encoder.downs.", "ups.": "decoder.ups."}


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
    upsampling: Upsampling = setting(
        "transposed", "transposed or bilinear", choices=UPSAMPLING_MODES
    )
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


class Decoder(nn.Module):
    """The expansive path: from the deepest features up, an Up block per level, `widths[level]`
    wide, each joined with that level's features (or, without skip connections, lined up with
    their size)."""

    def __init__(
        self,
        channels: tuple[int, ...],
        widths: list[int],
        batch_norm: bool = False,
        skip_connections: bool = True,
        upsampling: Upsampling = "transposed",
    ) -> None:
        super().__init__()
        below = [*widths[1:], channels[-1]]  # what each level's Up takes from the one below
        self.ups = nn.ModuleList(
            Up(below[level], widths[level], batch_norm, skip_connections, upsampling,
               skip_channels=channels[level])
            for level in reversed(range(len(widths)))
        )  # fmt: skip

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        *skips, x = features
        for up in self.ups:
            x = up(x, skips.pop())
        return x


class UNet(nn.Module):
    """An encoder of `levels` down-sampling levels, the decoder that mirrors it, and one logit
    channel. `base_channels` is the width of the first level; each level below doubles it.

    With an `encoder` (pipeline/model/encoders.py), the decoder is the paper's, of the same
    widths, and takes the backbone's features as skips; `pretrained` loads the backbone's
    ImageNet weights (what training starts from); without it the weights are random, for a
    state_dict to be loaded into.
    """

    def __init__(self, config: NetworkConfig | None = None, pretrained: bool = False) -> None:
        super().__init__()
        self.config = config = config or NetworkConfig()
        widths = [config.base_channels * 2**level for level in range(config.levels + 1)]
        self.encoder: Encoder
        if config.encoder == NO_ENCODER:
            self.encoder = PaperEncoder(config.in_channels, widths, config.batch_norm)
        else:
            self.encoder = PretrainedEncoder(
                config.encoder,
                (widths[0], widths[1]),
                config.batch_norm,
                config.skip_connections,
                pretrained,
            )
        self.decoder = Decoder(
            self.encoder.channels,
            widths[: config.levels],
            config.batch_norm,
            config.skip_connections,
            config.upsampling,
        )
        self.outc = nn.Conv2d(widths[0], 1, kernel_size=1)
        self.register_load_state_dict_pre_hook(_earlier_names_renamed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outc(self.decoder(self.encoder(x)))


def _earlier_names_renamed(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any
) -> None:
    """Weights saved under EARLIER_NAMES load as they are (PyTorch's load_state_dict hook)."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        name = key[len(prefix) :]
        for earlier, now in EARLIER_NAMES.items():
            if name.startswith(earlier):
                state_dict[prefix + now + name[len(earlier) :]] = state_dict.pop(key)
