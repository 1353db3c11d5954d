"""Typed parameters of every entry point: one dataclass per step, parsed from the command line
and checked there, so a bad value stops before any MLflow run exists.

Training's parameters are derived from the configs that declare them (`Recipe`,
`RuntimeConfig`; pipeline/settings.py); the others are declared here or, for promote, with its
step. The MLproject declares the same names and defaults (a test keeps the two in step); these
classes add the types, so values compare as numbers, not as the strings MLflow stores.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import shlex
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.data.download import source_kind
from pipeline.data.preprocess import check_settings as check_preprocess
from pipeline.errors import PipelineError
from pipeline.export import DEFAULT_OPSET, check_opset
from pipeline.images import DEFAULT_MAX_PIXELS
from pipeline.registry.promote import PromoteParams, check_promotion
from pipeline.serving.segmenter import RUNTIMES
from pipeline.settings import declared, parameter_fields, parse_bool
from pipeline.study.variants import PlannedVariant, parse_seeds, plan_variants
from pipeline.training.recipes import Recipe, recipe_overrides, resolve_recipe
from pipeline.training.runtime import RuntimeConfig

KAGGLE_SOURCE = "tapakah68/supervisely-filtered-segmentation-person-dataset"
MAX_PORT = 65535
TTA_HELP = (
    "test-time augmentation: average each photo's logits with its mirror image's (two passes "
    "of the network; the mask of a mirrored photo is then the mirrored mask)"
)
# The settings an architecture study sets for every variant alike.
STUDY_OVERRIDES = ("max_epochs", "patience", "batch_size", "base_channels")


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

    def __post_init__(self) -> None:
        source_kind(self.source)


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

    def __post_init__(self) -> None:
        check_preprocess(self.image_size, self.val_fraction, self.test_fraction, self.max_pixels)


def _check_recipe(params: Any) -> None:
    params.recipe_config()


def _recipe_config(params: Any) -> Recipe:
    """The recipe these params name, with their settings in place of its own."""
    return resolve_recipe(params.recipe, recipe_overrides(params))


# The recipe's settings are declared once, in the configs they belong to (pipeline/settings.py);
# here each becomes an optional parameter of the same name and help, None taking the recipe's.
TrainingParams = dataclasses.make_dataclass(
    "TrainingParams",
    [
        (
            "recipe",
            str,
            field(
                default="default",
                metadata=_help(
                    "paper (the reference exactly) or default; the settings below override it"
                ),
            ),
        ),
        *parameter_fields(Recipe, optional=True),
        ("seed", int, field(default=42, metadata=_help("seed of weights and data order"))),
        (
            "grid_every",
            int,
            field(
                default=5,
                metadata=_help("epochs between prediction grids of fixed val images"),
            ),
        ),
    ],
    frozen=True,
    namespace={
        "__module__": __name__,
        "__doc__": "The recipe and the settings that override it: what `train` fits, and what "
        "`main` passes on to its train step under the same names.",
        "__post_init__": _check_recipe,
        "recipe_config": _recipe_config,
    },
)


def _runtime_config(params: Any) -> RuntimeConfig:
    """The runtime settings among these params."""
    return RuntimeConfig(**{name: getattr(params, name) for name, _, _ in declared(RuntimeConfig)})


def _check_runtime(params: Any) -> None:
    params.runtime_config()


RuntimeParams = dataclasses.make_dataclass(
    "RuntimeParams",
    parameter_fields(RuntimeConfig, optional=False),
    frozen=True,
    namespace={
        "__module__": __name__,
        "__doc__": RuntimeConfig.__doc__,
        "__post_init__": _check_runtime,
        "runtime_config": _runtime_config,
    },
)


@dataclass(frozen=True)
class TrainParams(RuntimeParams, TrainingParams):
    """Fit the U-Net on the preprocessed cache and log the best model into the run."""

    data_dir: str = field(
        default="data/processed", metadata=_help("preprocess output folder or its artifact URI")
    )

    def __post_init__(self) -> None:
        self.runtime_config()
        self.recipe_config()


@dataclass(frozen=True)
class EvaluateParams:
    """Score any MLflow model on the test split: Dice, IoU, precision, recall, and figures of
    the best and worst images, logged against the model."""

    model_uri: str = field(metadata=_help("any MLflow model URI: runs:/..., models:/..."))
    data_dir: str = field(default="data/processed", metadata=_help("cache folder or artifact URI"))
    batch_size: int = field(default=8, metadata=_help("images per forward pass"))
    tta: bool = field(default=False, metadata=_help(TTA_HELP))

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise PipelineError(f"parameter batch_size={self.batch_size} must be at least 1")


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
    tta: bool = field(default=False, metadata=_help(TTA_HELP))

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        if self.runtime not in RUNTIMES:
            raise PipelineError(
                f"parameter runtime={self.runtime!r} is not one of {', '.join(RUNTIMES)}: torch "
                "runs the network in PyTorch, onnx the model's ONNX export in ONNX Runtime"
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

    def __post_init__(self) -> None:
        check_opset(self.opset)


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

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        if not 0 < self.port <= MAX_PORT:
            raise PipelineError(f"parameter port={self.port} is not a port: use 1 to {MAX_PORT}")


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

    def __post_init__(self) -> None:
        source_kind(self.source)
        check_preprocess(self.image_size, self.val_fraction, self.test_fraction, self.max_pixels)


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

    def __post_init__(self) -> None:
        DataSourceParams.__post_init__(self)
        self.runtime_config()
        self.recipe_config()
        check_promotion(self.model_name, self.alias, self.min_improvement, self.min_dice)


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

    def __post_init__(self) -> None:
        DataSourceParams.__post_init__(self)
        self.runtime_config()
        self.study_plan()

    def study_plan(self) -> tuple[list[PlannedVariant], list[int]]:
        """The variants and seeds to run."""
        overrides = {name: getattr(self, name) for name in STUDY_OVERRIDES}
        return plan_variants(self.variants, self.recipe, overrides), parse_seeds(self.seeds)


def check_threshold(threshold: float) -> None:
    if not 0 < threshold < 1:
        raise PipelineError(f"parameter threshold={threshold} must be between 0 and 1 (exclusive)")


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


def as_text(params: Any) -> dict[str, str]:
    """Parameters (a params object or a mapping) as the strings MLflow logs, with booleans in
    the MLproject's spelling."""
    values = params if isinstance(params, Mapping) else dataclasses.asdict(params)
    return {name: _text(value) for name, value in values.items()}


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
