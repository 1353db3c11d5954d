"""The U-Net's encoders: the paper's contracting path, and ImageNet backbones of Hugging Face
transformers in its place.

Every encoder gives the features of every level, finest first, and says how wide each is
(`Encoder`); the decoder (pipeline/model/unet.py) is the same whichever it is. With `encoder`
other than `none`, the paper's first two levels (full and half resolution) stay and a backbone
gives the four below them, at strides 4, 8, 16 and 32. Each backbone is described here in full
(its transformers config), so a network is built the same way whether its weights come from
the Hub (`pretrained`, what training starts from) or from a logged model's state_dict (serving,
loading a checkpoint, tests), and the second never downloads anything.

transformers is an optional extra (`pip install -e '.[encoders]'`): it is imported only when
a backbone is built, so the paper's U-Net, and every step that does not build one, never
import it. timm and segmentation_models_pytorch would do the same job but need torchvision, and
transformers' ResNet and ConvNeXt need nothing beyond torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.errors import PipelineError, first_line
from pipeline.model.blocks import DoubleConv, Down

NO_ENCODER = "none"
EXTRA = "encoders"
LIBRARY = "transformers"
# The stages whose features the decoder takes: strides 4, 8, 16 and 32.
STAGES = ("stage1", "stage2", "stage3", "stage4")
# Down-sampling levels of a network with an encoder: stride 32 is five halvings of the photo.
ENCODER_LEVELS = 5
# What the backbones' image processors subtract and divide by (ImageNet's statistics).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderSpec:
    """A backbone: where its pretrained weights are, and its architecture as a transformers
    config of `family` (resnet or convnext) with these `settings`, which are those of the
    Hub's config.json for `hub_id`."""

    hub_id: str
    family: str
    settings: dict[str, Any] = field(default_factory=dict)
    # Layers of the backbone that the Hub's classification checkpoint does not hold, and
    # layers of the checkpoint that the backbone has no use for (the classifier's).
    new_layers: tuple[str, ...] = ()
    unused_layers: tuple[str, ...] = ("classifier.",)


SPECS: dict[str, EncoderSpec] = {
    "resnet18": EncoderSpec(
        "microsoft/resnet-18",
        "resnet",
        {"depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 256, 512], "layer_type": "basic"},
    ),
    "resnet34": EncoderSpec(
        "microsoft/resnet-34",
        "resnet",
        {"depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 256, 512], "layer_type": "basic"},
    ),
    "resnet50": EncoderSpec(
        "microsoft/resnet-50",
        "resnet",
        {
            "depths": [3, 4, 6, 3],
            "hidden_sizes": [256, 512, 1024, 2048],
            "layer_type": "bottleneck",
        },
    ),
    # The backbone normalises each stage's features with a LayerNorm of its own, in place of
    # the classifier's one after the last stage.
    "convnext-tiny": EncoderSpec(
        "facebook/convnext-tiny-224",
        "convnext",
        {"depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768]},
        new_layers=("hidden_states_norms.",),
        unused_layers=("classifier.", "convnext.layernorm."),
    ),
}
ENCODERS: tuple[str, ...] = (NO_ENCODER, *SPECS)


def _library() -> Any:
    """transformers, or a message that says how to install it."""
    try:
        import transformers
    except ImportError:
        raise PipelineError(
            f"a pretrained encoder needs Hugging Face {LIBRARY}, the optional extra "
            f"`{EXTRA}`: install it with `pip install -e '.[{EXTRA}]'`, or use --encoder "
            f"{NO_ENCODER}"
        ) from None
    return transformers


def backbone_classes(family: str) -> tuple[type, type]:
    """The transformers config and backbone classes of a family."""
    library = _library()
    if family == "resnet":
        return library.ResNetConfig, library.ResNetBackbone
    if family == "convnext":
        return library.ConvNextConfig, library.ConvNextBackbone
    raise ValueError(f"no backbone family {family!r}")


def spec_of(name: str) -> EncoderSpec:
    if name not in SPECS:
        raise PipelineError(f"parameter encoder={name!r} is not one of {', '.join(ENCODERS)}")
    return SPECS[name]


def hub_cache() -> str:
    """Where the Hub's downloads are kept: HF_HUB_CACHE, else HF_HOME/hub, else
    ~/.cache/huggingface/hub."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers' load report (its table of unused and new weights) left out: what matters
    in it is checked by `_check_loaded`."""
    logging = _library().utils.logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def build_backbone(name: str, pretrained: bool) -> nn.Module:
    """The transformers backbone of encoder `name`, giving the features of STAGES: random
    weights, or with `pretrained` the Hub's ImageNet weights (downloaded once into the Hub's
    cache); a PipelineError names the weights when they cannot be had."""
    spec = spec_of(name)
    config_class, backbone_class = backbone_classes(spec.family)
    config = config_class(**spec.settings, out_features=list(STAGES))
    if not pretrained:
        return backbone_class(config)
    try:
        with _quiet_loading():
            backbone, info = backbone_class.from_pretrained(
                spec.hub_id, config=config, dtype=torch.float32, output_loading_info=True
            )
    except OSError as error:
        raise PipelineError(
            f"cannot load the pretrained weights of encoder={name}, {spec.hub_id} on the "
            f"Hugging Face Hub ({first_line(error)}): they download once into the Hub's cache "
            f"({hub_cache()}); connect this machine to the internet for one run, or set "
            "HF_HOME to a folder whose hub/ cache holds them (e.g. copied from a machine that "
            f"has trained with encoder={name}), or train without them: --encoder {NO_ENCODER}"
        ) from error
    except RuntimeError as error:  # weights of other shapes than the architecture here
        raise _unfit(name, spec, first_line(error)) from error
    _check_loaded(name, spec, info)
    # from_pretrained leaves the model in eval mode; a fresh network trains.
    return backbone.train()


def _check_loaded(name: str, spec: EncoderSpec, info: dict[str, Any]) -> None:
    """Refuse a backbone whose layers did not all get the Hub's weights (but for those the
    classification checkpoint cannot have), or that left some of them unused (but for the
    classifier's): transformers would only warn."""
    missing = sorted(
        key
        for key in info["missing_keys"]
        # A batch norm's step counter: unused with a momentum, and not in every checkpoint.
        if not key.startswith(spec.new_layers) and not key.endswith("num_batches_tracked")
    )
    mismatched = sorted(str(key) for key in info["mismatched_keys"])
    unused = sorted(
        key for key in info["unexpected_keys"] if not key.startswith(spec.unused_layers)
    )
    if missing or mismatched:
        raise _unfit(name, spec, f"not loaded: {', '.join([*missing, *mismatched][:5])}")
    if unused:
        raise _unfit(name, spec, f"left unused: {', '.join(unused[:5])}")


def _unfit(name: str, spec: EncoderSpec, detail: str) -> PipelineError:
    return PipelineError(
        f"the weights of {spec.hub_id} do not fit encoder={name} as this pipeline builds it "
        f"({detail}); the Hub's model has changed: report it, or use another encoder"
    )


class Encoder(nn.Module):
    """What the decoder takes: photos in, the features of every level out, finest first, each
    `channels[level]` wide. A level whose features nothing uses (a backbone's first two levels
    without skip connections) is a map of no channels, which still gives the decoder its size."""

    channels: tuple[int, ...]


class PaperEncoder(Encoder):
    """The paper's contracting path: a DoubleConv at full resolution, then a Down block per
    level below it, `widths` wide."""

    def __init__(self, in_channels: int, widths: list[int], batch_norm: bool = False) -> None:
        super().__init__()
        self.inc = DoubleConv(in_channels, widths[0], batch_norm)
        self.downs = nn.ModuleList(
            Down(widths[i], widths[i + 1], batch_norm) for i in range(len(widths) - 1)
        )
        self.channels = tuple(widths)

    def forward(self, photos: torch.Tensor) -> list[torch.Tensor]:
        features = [self.inc(photos)]
        for down in self.downs:
            features.append(down(features[-1]))
        return features


class PretrainedEncoder(Encoder):
    """The paper's first two levels, then backbone `name`'s four (STAGES), with the input
    normalisation the backbone was pretrained with inside: [0, 1] RGB photos in, like the
    paper's. Without skip connections the first two levels would feed nothing, so there are
    none. `pretrained` loads the backbone's ImageNet weights (what training starts from);
    without it they are random, for a state_dict to be loaded into."""

    def __init__(
        self,
        name: str,
        first_widths: tuple[int, int],
        batch_norm: bool = False,
        skip_connections: bool = True,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        # Constants of the encoder, not weights: not in the state_dict, but moved with it.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.backbone = build_backbone(name, pretrained)
        full, half = first_widths
        # RGB, as the backbone's normalisation; built in this order, so a seed gives the same
        # weights it gave before the encoders shared one interface.
        self.inc = DoubleConv(3, full, batch_norm) if skip_connections else nn.Identity()
        self.downs = nn.ModuleList([Down(full, half, batch_norm)] if skip_connections else [])
        first = first_widths if skip_connections else (0, 0)
        self.channels = (*first, *self.backbone.channels)

    def normalise(self, photos: torch.Tensor) -> torch.Tensor:
        """[0, 1] photos as the backbone saw ImageNet's."""
        return (photos - self.mean) / self.std

    def forward(self, photos: torch.Tensor) -> list[torch.Tensor]:
        normalised = self.normalise(photos)
        return [*self._first_levels(normalised), *self.backbone(normalised).feature_maps]

    def _first_levels(self, normalised: torch.Tensor) -> list[torch.Tensor]:
        if not self.downs:  # no skips: only the levels' sizes count
            return [normalised[:, :0], normalised[:, :0, ::2, ::2]]
        full = self.inc(normalised)
        return [full, self.downs[0](full)]
