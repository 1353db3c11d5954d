"""Typed parameters of every entry point: one dataclass per step, parsed from the command line.

The MLproject declares the same names and defaults (a test keeps the two in step); these
classes add the types, so values compare as numbers, not as the strings MLflow stores.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import shlex
import typing
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError
from pipeline.export import DEFAULT_OPSET
from pipeline.serving.images import DEFAULT_MAX_PIXELS

KAGGLE_SOURCE = "tapakah68/supervisely-filtered-segmentation-person-dataset"
TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off"}


def _help(text: str) -> dict:
    return {"help": text}


def same_as(params_class: type, name: str) -> Any:
    """A parameter declared as another step's, with its default and its help."""
    spec = next(spec for spec in dataclasses.fields(params_class) if spec.name == name)
    return field(default=spec.default, metadata=spec.metadata)


@dataclass(frozen=True)
class DownloadParams:
    """Land the dataset (df.csv and the image/mask pairs it lists) in a local folder and log it
    as the run's artifacts, recording where it came from."""

    source: str = field(
        default=KAGGLE_SOURCE,
        metadata=_help("Kaggle handle, local folder, local .zip, http(s) zip URL or synthetic[:N]"),
    )
    output_dir: str = field(default="data/raw", metadata=_help("where the dataset lands"))
    log_data: bool = field(
        default=True, metadata=_help("log the dataset as run artifacts, so others can use its URI")
    )


@dataclass(frozen=True)
class PreprocessParams:
    """Check every image/mask pair, resize the good ones to a square and split them into
    train/val/test arrays that training memory-maps; bad rows are skipped with their reason."""

    raw_dir: str = field(default="data/raw", metadata=_help("folder or artifact URI of download"))
    output_dir: str = field(default="data/processed", metadata=_help("where the cache is written"))
    image_size: int = field(default=256, metadata=_help("side of the square images"))
    val_fraction: float = field(default=0.15, metadata=_help("share of rows for validation"))
    test_fraction: float = field(default=0.15, metadata=_help("share of rows for the test split"))
    seed: int = field(default=42, metadata=_help("seed of the split"))
    strict: bool = field(default=False, metadata=_help("fail on any bad row instead of skipping"))
    num_workers: int = field(default=0, metadata=_help("decoding processes; 0 = one per core"))
    log_data: bool = field(default=True, metadata=_help("log the cache as run artifacts"))
    max_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata=_help("images or masks with more pixels are bad rows, never decoded"),
    )


PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
MAX_TIME = re.compile(r"^\d+:\d{1,2}:\d{1,2}:\d{1,2}$")
DEVICES = re.compile(r"^(auto|-1|\d+|\d+(,\d+)*,?)$")
# Lightning's launchers that start one process per device and keep the trainer in it. ddp_spawn
# and ddp_fork are left out: spawn pickles the trainer with its MLflow journal, and fork breaks
# CUDA and MLflow's threads.
STRATEGIES = ("auto", "ddp")
AUTO = "auto"
# torch.compile's modes (all with the inductor backend); aot_eager traces the network, forward
# and backward, as inductor does but runs the traced graphs as they are: no compiler needed,
# for checking on any machine that the network compiles.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("aot_eager",)


def check_runtime(params: Any) -> None:
    """The Lightning settings of a train step, checked before any run opens or any step runs:
    Lightning would only refuse them after download, preprocess and data loading."""
    if params.precision not in PRECISIONS:
        raise PipelineError(
            f"parameter precision={params.precision!r} is not one of {', '.join(PRECISIONS)}"
        )
    if params.accelerator not in ACCELERATORS:
        raise PipelineError(
            f"parameter accelerator={params.accelerator!r} is not one of {', '.join(ACCELERATORS)}"
        )
    if not DEVICES.match(params.devices.replace(" ", "")):
        raise PipelineError(
            f"parameter devices={params.devices!r} is not auto, a count (1, or -1 for all) or a "
            "list of device indices like 0,1"
        )
    if params.strategy not in STRATEGIES:
        raise PipelineError(
            f"parameter strategy={params.strategy!r} is not one of {', '.join(STRATEGIES)}"
        )
    if params.num_nodes < 1:
        raise PipelineError(f"parameter num_nodes={params.num_nodes} must be at least 1")
    for name in ("channels_last", "cudnn_benchmark"):
        resolve_switch(name, getattr(params, name), auto=False)
    compile_options(params.compile)
    if params.max_time and not MAX_TIME.match(params.max_time):
        raise PipelineError(
            f"parameter max_time={params.max_time!r} is not DD:HH:MM:SS (e.g. 00:12:00:00 for 12 "
            "hours); leave it empty for no limit"
        )


@dataclass(frozen=True)
class TrainingParams:
    """The recipe and the settings that override it: what `train` fits, and what `main` passes
    on to its train step under the same names."""

    recipe: str = field(
        default="default",
        metadata=_help("paper (the reference exactly) or default; the settings below override it"),
    )
    max_epochs: int | None = field(default=None, metadata=_help("upper bound on epochs"))
    batch_size: int | None = field(
        default=None,
        metadata=_help(
            "images per step on each device; the global batch is batch_size x devices x num_nodes"
        ),
    )
    lr: float | None = field(default=None, metadata=_help("peak learning rate"))
    weight_decay: float | None = field(default=None, metadata=_help("optimizer weight decay"))
    optimizer: str | None = field(default=None, metadata=_help("adam or adamw"))
    schedule: str | None = field(default=None, metadata=_help("plateau (on val loss) or onecycle"))
    loss: str | None = field(default=None, metadata=_help("bce or bce_dice"))
    augment: bool | None = field(default=None, metadata=_help("random flips, crops and colour"))
    base_channels: int | None = field(
        default=None, metadata=_help("width of the first U-Net level")
    )
    depth: int | None = field(default=None, metadata=_help("number of down-sampling levels"))
    batch_norm: bool | None = field(
        default=None, metadata=_help("batch normalisation after each convolution")
    )
    skip_connections: bool | None = field(
        default=None, metadata=_help("encoder-to-decoder skip connections")
    )
    upsampling: str | None = field(default=None, metadata=_help("transposed or bilinear"))
    patience: int | None = field(
        default=None, metadata=_help("epochs without val Dice gain before stop")
    )
    seed: int = field(default=42, metadata=_help("seed of weights and data order"))
    grid_every: int = field(
        default=5, metadata=_help("epochs between prediction grids of fixed val images")
    )


@dataclass(frozen=True)
class RuntimeParams:
    """Where and how long train steps run; passed to every train step under the same names."""

    precision: str = field(
        default="auto", metadata=_help("32-true, 16-mixed, bf16-mixed or auto (best the card has)")
    )
    accelerator: str = field(default="auto", metadata=_help("auto, cpu, gpu, ..."))
    devices: str = field(
        default="auto",
        metadata=_help(
            "devices per node, one process each: auto (all GPUs, else 1), a count, or a list "
            "like 0,1"
        ),
    )
    num_nodes: int = field(
        default=1,
        metadata=_help(
            "machines of a distributed fit; each starts the same command (torchrun, srun); "
            "checkpoint_dir must be on storage all of them see"
        ),
    )
    strategy: str = field(
        default="auto",
        metadata=_help(
            "auto (DDP when there are several devices) or ddp: one process per device, only the "
            "first logs to MLflow; the global batch is batch_size x devices x num_nodes"
        ),
    )
    channels_last: str = field(
        default=AUTO,
        metadata=_help("auto (on for CUDA), true or false: NHWC layout, faster on tensor cores"),
    )
    compile: str = field(
        default="false",
        metadata=_help(
            "torch.compile the U-Net: false, true (mode default), a mode (reduce-overhead, "
            "max-autotune, max-autotune-no-cudagraphs) or aot_eager (traced, not compiled)"
        ),
    )
    cudnn_benchmark: str = field(
        default=AUTO,
        metadata=_help(
            "auto (on for CUDA: image sizes are fixed), true or false: cuDNN times its "
            "algorithms first and keeps the fastest"
        ),
    )
    num_workers: int = field(default=-1, metadata=_help("data loader workers; -1 = automatic"))
    max_time: str = field(
        default="", metadata=_help("wall-clock budget DD:HH:MM:SS; empty = no limit")
    )
    checkpoint_dir: str = field(
        default="checkpoints", metadata=_help("local folder for resumable checkpoints")
    )

    def __post_init__(self) -> None:
        check_runtime(self)


@dataclass(frozen=True)
class TrainParams(RuntimeParams, TrainingParams):
    """Fit the U-Net on the preprocessed cache and log the best model into the run."""

    data_dir: str = field(
        default="data/processed", metadata=_help("preprocess output folder or its artifact URI")
    )


@dataclass(frozen=True)
class EvaluateParams:
    """Score any MLflow model on the test split: Dice, IoU, precision, recall, and figures of
    the best and worst images, logged against the model."""

    model_uri: str = field(metadata=_help("any MLflow model URI: runs:/..., models:/..."))
    data_dir: str = field(default="data/processed", metadata=_help("cache folder or artifact URI"))
    batch_size: int = field(default=8, metadata=_help("images per forward pass"))


@dataclass(frozen=True)
class PromoteParams:
    """Register the candidate and give it the alias if it beats the model holding it on the
    same test split; every decision that moves the alias is kept on the version."""

    model_uri: str = field(metadata=_help("the candidate: runs:/<run>/model or models:/<id>"))
    model_name: str = field(default="unet-person", metadata=_help("registered model name"))
    alias: str = field(default="champion", metadata=_help("the alias the better model holds"))
    min_improvement: float = field(
        default=0.0, metadata=_help("test Dice gain over the alias holder needed to take it")
    )
    min_dice: float = field(
        default=0.5, metadata=_help("test Dice the first model needs to take a free alias")
    )
    data_dir: str = field(
        default="data/processed", metadata=_help("the split both models are scored on")
    )
    batch_size: int = field(default=8, metadata=_help("images per forward pass when scoring"))


@dataclass(frozen=True)
class HistoryParams:
    """Every move of an alias, oldest first: when, which version took it from which, both test
    Dice scores and the promote run that decided. Read from the tracking store; writes nothing."""

    model_name: str = same_as(PromoteParams, "model_name")
    alias: str = same_as(PromoteParams, "alias")


@dataclass(frozen=True)
class PredictParams:
    """A mask, an overlay and a row of predictions.csv for every photo in a folder, with any
    MLflow model."""

    input_dir: str = field(metadata=_help("folder of photos (any size and mode), searched deeply"))
    model_uri: str = field(
        default="models:/unet-person@champion", metadata=_help("any MLflow model URI")
    )
    output_dir: str = field(
        default="predictions", metadata=_help("where masks/, overlays/ and predictions.csv go")
    )
    threshold: float = field(default=0.5, metadata=_help("P(person) above which a pixel is one"))
    runtime: str = field(
        default="torch",
        metadata=_help("torch, or onnx: the model's ONNX export run by ONNX Runtime on the CPU"),
    )


@dataclass(frozen=True)
class ExportParams:
    """Write a logged model's network as one ONNX file (uint8 photos in, logits out; free batch
    size, height and width), check it against PyTorch in ONNX Runtime, and log both."""

    model_uri: str = same_as(PredictParams, "model_uri")
    output_path: str = field(
        default="unet-person.onnx", metadata=_help("the .onnx file to write (folders are made)")
    )
    opset: int = field(default=DEFAULT_OPSET, metadata=_help("ONNX opset of the file, 18 to 23"))


@dataclass(frozen=True)
class DemoParams:
    """A page in the browser to try a model on your own photos: each photo beside its mask and
    overlay, with the person's share, the time taken, a threshold slider and the mask to
    download. It serves until stopped (Ctrl-C) and logs no run."""

    model_uri: str = same_as(PredictParams, "model_uri")
    host: str = field(
        default="127.0.0.1",
        metadata=_help("address the page listens on; 0.0.0.0 opens it to the network"),
    )
    port: int = field(default=8000, metadata=_help("port the page listens on"))
    threshold: float = field(
        default=0.5, metadata=_help("the slider's first P(person) above which a pixel is one")
    )


@dataclass(frozen=True)
class DataSourceParams:
    """Where `main` and `ablate` get their data: the download and preprocess steps' params."""

    source: str = same_as(DownloadParams, "source")
    raw_dir: str = same_as(DownloadParams, "output_dir")
    processed_dir: str = same_as(PreprocessParams, "output_dir")
    image_size: int = same_as(PreprocessParams, "image_size")
    val_fraction: float = same_as(PreprocessParams, "val_fraction")
    test_fraction: float = same_as(PreprocessParams, "test_fraction")
    split_seed: int = same_as(PreprocessParams, "seed")
    strict: bool = same_as(PreprocessParams, "strict")
    log_data: bool = same_as(DownloadParams, "log_data")
    max_pixels: int = same_as(PreprocessParams, "max_pixels")


@dataclass(frozen=True)
class MainParams(DataSourceParams, RuntimeParams, TrainingParams):
    """The whole pipeline under one parent run: download, preprocess, train, evaluate and
    promote, reusing any step already finished with the same inputs and resuming an interrupted
    training from its checkpoint."""

    reuse: bool = field(default=True, metadata=_help("reuse finished steps with equal inputs"))
    promote: bool = field(default=True, metadata=_help("end with promote; false stops at evaluate"))
    model_name: str = same_as(PromoteParams, "model_name")
    alias: str = same_as(PromoteParams, "alias")
    min_improvement: float = same_as(PromoteParams, "min_improvement")
    min_dice: float = same_as(PromoteParams, "min_dice")


@dataclass(frozen=True)
class AblateParams(DataSourceParams, RuntimeParams):
    """The architecture study: the baseline recipe and variants that each change one thing,
    trained and evaluated under one parent run, summarised in a table and a chart."""

    recipe: str = field(
        default="default", metadata=_help("the study's baseline; each variant changes one thing")
    )
    variants: str = field(
        default="all", metadata=_help("comma-separated variant names (see README), or all")
    )
    seeds: str = field(default="42", metadata=_help("comma-separated seeds, one run per seed"))
    max_epochs: int | None = field(default=None, metadata=_help("epoch budget of every variant"))
    patience: int | None = field(
        default=None, metadata=_help("early-stopping patience of every variant")
    )
    batch_size: int | None = field(
        default=None, metadata=_help("batch size of every variant, per device")
    )
    base_channels: int | None = field(
        default=None, metadata=_help("baseline width; width variants halve and double it")
    )
    reuse: bool = field(
        default=True, metadata=_help("reuse finished runs: a stopped study picks up where it was")
    )
    output_dir: str = field(
        default="ablation", metadata=_help("local folder for the summary table and chart")
    )


def parse_bool(name: str, text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise PipelineError(f"parameter {name}={text!r} is not a boolean: use true or false")


def resolve_switch(name: str, text: str, auto: bool) -> bool:
    """An auto/true/false parameter's value, `auto` standing for what suits this machine."""
    if str(text).strip().lower() == AUTO:
        return auto
    try:
        return parse_bool(name, text)
    except PipelineError:
        raise PipelineError(f"parameter {name}={text!r} is not auto, true or false") from None


def compile_options(text: str) -> dict[str, str] | None:
    """torch.compile's backend and mode for the `compile` parameter; None to run eagerly."""
    value = str(text).strip().lower()
    if value in FALSE_WORDS:
        return None
    if value in TRUE_WORDS:
        return {"backend": "inductor", "mode": "default"}
    if value in COMPILE_BACKENDS:
        return {"backend": value}
    if value in COMPILE_MODES:
        return {"backend": "inductor", "mode": value}
    raise PipelineError(
        f"parameter compile={text!r} is not false, true, a torch.compile mode "
        f"({', '.join(COMPILE_MODES)}) or {', '.join(COMPILE_BACKENDS)}"
    )


def convert(params_class: type, name: str, text: Any) -> Any:
    """The typed value of parameter `name` given as text, or a PipelineError naming it.

    An optional parameter (`int | None`) given as empty text is None: "take the recipe's".
    """
    kind = typing.get_type_hints(params_class)[name]
    if type(None) in typing.get_args(kind):
        if text is None or str(text).strip() in ("", "None"):
            return None
        (kind,) = (option for option in typing.get_args(kind) if option is not type(None))
    if kind is bool:
        return parse_bool(name, text)
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise PipelineError(f"parameter {name}={text!r} is not a valid {kind.__name__}") from None


def parse(params_class: type, argv: list[str] | None = None, prog: str | None = None):
    """Build `params_class` from `--name value` arguments, converting and checking each value."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=inspect.cleandoc(params_class.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for spec in dataclasses.fields(params_class):
        required = spec.default is dataclasses.MISSING
        default = None if required else _text(spec.default)
        if required:
            shown = "required"
        elif spec.default is None:
            shown = "default: the recipe's; empty takes it"
        else:
            shown = f"default: {default}" if default else "default: empty"
        parser.add_argument(
            f"--{spec.name}",
            required=required,
            default=default,
            metavar=spec.name.upper(),
            help=f"{spec.metadata.get('help', '')} ({shown})",
        )
    raw = vars(parser.parse_args(argv))
    # MLflow's Kubernetes backend runs the command without a shell, each word still quoted for
    # one (mlflow/projects/kubernetes.py, _get_run_command): `''` for an empty value.
    return params_class(
        **{name: convert(params_class, name, shell_unquoted(text)) for name, text in raw.items()}
    )


def shell_unquoted(text: str) -> str:
    """A param as the step got it: `mlflow run` logs each value quoted for the shell, as it
    puts it in the command (`''` for an empty value, `'my photos'`); values that need no
    quotes, and everything the steps log themselves, come back as they are."""
    try:
        words = shlex.split(text)
    except ValueError:  # an unbalanced quote: not MLflow's quoting
        return text
    value = words[0] if len(words) == 1 else ""
    return value if len(words) <= 1 and shlex.quote(value) == text else text


def as_text(params) -> dict[str, str]:
    """Parameters as the strings MLflow logs, with booleans in the MLproject's spelling."""
    return {name: _text(value) for name, value in dataclasses.asdict(params).items()}


def _text(value: Any) -> str:
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def same_values(params_class: type, logged: dict[str, str], wanted: dict[str, Any]) -> bool:
    """Whether logged params equal the wanted ones by value: 1e-5 and 0.00001 are the same lr."""
    for name, value in wanted.items():
        if name not in logged:
            return False
        try:
            if convert(params_class, name, logged[name]) != value:
                return False
        except PipelineError:
            return False
    return True
