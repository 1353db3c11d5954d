"""Typed parameters of every entry point: one dataclass per step, parsed from the command line
and checked there, so a bad value stops before any MLflow run exists.

The parameters of the entry points that train (train, main, ablate, tune) are in
pipeline/training_params.py; the others are declared here or, for promote, with its request
(pipeline/registry/request.py). This module loads no PyTorch, so the steps that need none start
in a moment. A params class may nest others (`data: DataSourceParams`) and configs
(`runtime: RuntimeConfig`): on the command line, in the MLproject and in the run's params their
fields are flat, one parameter each (`parameters`). The MLproject is written from these classes
(`python -m pipeline mlproject`); they add the types, so values compare as numbers, not as the
strings MLflow stores.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import shlex
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pipeline.data.download import source_kind
from pipeline.data.preprocess import check_settings as check_preprocess
from pipeline.errors import PipelineError
from pipeline.export import DEFAULT_OPSET, check_opset
from pipeline.images import DEFAULT_MAX_PIXELS
from pipeline.locations import check_location
from pipeline.registry.request import PromoteParams, check_name
from pipeline.registry.versions import check_alias
from pipeline.serving import RUNTIMES
from pipeline.settings import about, declared, flat_settings, parse_bool

KAGGLE_SOURCE = "tapakah68/supervisely-filtered-segmentation-person-dataset"
MAX_PORT = 65535
ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")  # mlflow.pyfunc.spark_udf's
TTA_HELP = (
    "test-time augmentation: average each photo's logits with its mirror image's (two passes "
    "of the network; the mask of a mirrored photo is then the mirrored mask)"
)


SAME_AS = "same_as"  # metadata: the (params class, name) a parameter is declared as
OVERRIDES = "overrides"  # metadata: the config class whose settings a mapping field changes


@dataclass(frozen=True)
class Parameter:
    """One parameter of an entry point, wherever in its params class's nest it is declared:
    `group` is the title of the nested part it belongs to (empty: the command's own),
    `choices` the values its setting allows, `presets` what each preset (recipe) sets it to
    when the parameter is left empty."""

    name: str
    kind: Any
    default: Any  # dataclasses.MISSING: required
    help: str
    group: str = ""
    choices: tuple[Any, ...] | None = None
    presets: tuple[tuple[str, Any], ...] = ()

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def overrides(
    config_class: type,
    presets: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
    helps: Mapping[str, str] | None = None,
) -> Any:
    """A field holding the settings of `config_class` a command changes, by name: one optional
    parameter per setting (empty: what the chosen one of `presets`, configs by name, sets),
    `defaults` where the command has its own, `helps` where it says more than the setting's
    declaration."""
    given = dict(defaults or {})
    metadata = {OVERRIDES: (config_class, given, dict(helps or {}), dict(presets))}
    return field(default_factory=lambda: dict(given), metadata=metadata)


@cache
def parameters(params_class: type, group: str = "") -> tuple[Parameter, ...]:
    """The parameters of `params_class` in order, nested classes' in their place: the names
    the command line, the MLproject and the run's params use, so each is unique."""
    found: list[Parameter] = []
    hints = typing.get_type_hints(params_class)
    for spec in dataclasses.fields(params_class):
        kind = hints[spec.name]
        if OVERRIDES in spec.metadata:
            config_class, defaults, helps, presets = spec.metadata[OVERRIDES]
            values = {preset: flat_settings(config) for preset, config in presets.items()}
            for name, setting_kind, setting in declared(config_class):
                found.append(
                    Parameter(
                        name,
                        plain(setting_kind) | None,
                        defaults.get(name),
                        helps.get(name, setting.metadata["help"]),
                        group,
                        setting.metadata["choices"],
                        tuple((preset, values[preset][name]) for preset in presets),
                    )
                )
        elif dataclasses.is_dataclass(kind):
            found += parameters(kind, group or spec.metadata.get("help", ""))
        else:
            help_text = spec.metadata.get("help", "")
            choices = spec.metadata.get("choices")
            found.append(Parameter(spec.name, plain(kind), spec.default, help_text, group, choices))
    names = [parameter.name for parameter in found]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise TypeError(f"{params_class.__name__} declares {', '.join(twice)} more than once")
    return tuple(found)


def shown_default(found: Parameter) -> str:
    """A parameter's default as help and the reference say it: a setting left to the recipe
    shows what each recipe gives it, the default recipe's first."""
    if found.required:
        return "required"
    if found.default is None and found.presets:
        values = [(preset, text_of(value) or "empty") for preset, value in found.presets]
        if len({value for _, value in values}) == 1:
            return f"{values[0][1]} in every recipe"
        (first, value), *others = values
        return ", ".join([f"{value} in recipe {first}", *(f"{v} in {p}" for p, v in others)])
    if found.default is None:
        return "the recipe's"
    return text_of(found.default) or "empty"


def plain(kind: Any) -> Any:
    """A `Literal` of strings as `str`: what the command line gives (the setting checks which)."""
    if typing.get_origin(kind) is typing.Literal:
        return type(typing.get_args(kind)[0])
    return kind


def parameter(params_class: type, name: str) -> Parameter:
    return next(found for found in parameters(params_class) if found.name == name)


def flat_values(params: Any) -> dict[str, Any]:
    """Every parameter's value by name, as `parameters` lists them (None: the recipe's)."""
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(params):
        value = getattr(params, spec.name)
        if OVERRIDES in spec.metadata:
            config_class = spec.metadata[OVERRIDES][0]
            values |= {name: value.get(name) for name, _, _ in declared(config_class)}
        elif dataclasses.is_dataclass(value):
            values |= flat_values(value)
        else:
            values[spec.name] = value
    return values


def built(params_class: type, values: Mapping[str, Any]) -> Any:
    """`params_class` from flat values by parameter name; one not given keeps its default, and
    a setting given as None is left to the config's own."""
    given: dict[str, Any] = {}
    hints = typing.get_type_hints(params_class)
    for spec in dataclasses.fields(params_class):
        kind = hints[spec.name]
        if OVERRIDES in spec.metadata:
            config_class, defaults, *_ = spec.metadata[OVERRIDES]
            changes = {
                name: values.get(name, defaults.get(name)) for name, _, _ in declared(config_class)
            }
            given[spec.name] = {name: value for name, value in changes.items() if value is not None}
        elif dataclasses.is_dataclass(kind):
            given[spec.name] = built(kind, values)
        elif spec.name in values:
            given[spec.name] = values[spec.name]
    return params_class(**given)


def same_as(params_class: type, name: str) -> Any:
    """A parameter declared as another step's, with its default and its help; `passed_on`
    hands it to that step under the step's name."""
    spec = next(spec for spec in dataclasses.fields(params_class) if spec.name == name)
    return field(default=spec.default, metadata={**spec.metadata, SAME_AS: (params_class, name)})


def passed_on(params: Any, step_class: type, **given: Any) -> Any:
    """The `step_class` params a workflow's `params` make: each of its parameters declared
    `same_as` one of the step's under the step's name, then `given`."""
    values = {}
    for spec in dataclasses.fields(params):
        step, name = spec.metadata.get(SAME_AS, (None, None))
        if step is step_class:
            values[name] = getattr(params, spec.name)
    return step_class(**(values | given))


@dataclass(frozen=True)
class DownloadParams:
    """Land the dataset (df.csv and the image/mask pairs it lists) in a local folder and log it
    as the run's artifacts, recording where it came from."""

    source: str = field(
        default=KAGGLE_SOURCE,
        metadata=about("Kaggle handle, local folder, local .zip, http(s) zip URL or synthetic[:N]"),
    )
    output_dir: str = field(default="data/raw", metadata=about("where the dataset lands"))
    log_data: bool = field(
        default=True,
        metadata=about("log the dataset as run artifacts, so others can use its URI"),
    )

    def __post_init__(self) -> None:
        source_kind(self.source)


@dataclass(frozen=True)
class PreprocessParams:
    """Check every image/mask pair, resize the good ones to a square and split them into
    train/val/test arrays that training memory-maps; bad rows are skipped with their reason."""

    raw_dir: str = field(default="data/raw", metadata=about("folder or artifact URI of download"))
    output_dir: str = field(
        default="data/processed",
        metadata=about("where the cache is written: a folder, or s3://bucket/prefix for shards"),
    )
    output_format: str = field(
        default="arrays",
        metadata=about(
            "arrays (memory-mapped .npy, fastest from a local disk) or shards (LitData chunks "
            "that train streams, for data beyond one disk; needed for s3://)"
        ),
    )
    image_size: int = field(default=256, metadata=about("side of the square images"))
    val_fraction: float = field(default=0.15, metadata=about("share of rows for validation"))
    test_fraction: float = field(default=0.15, metadata=about("share of rows for the test split"))
    seed: int = field(default=42, metadata=about("seed of the split"))
    strict: bool = field(default=False, metadata=about("fail on any bad row instead of skipping"))
    num_workers: int = field(default=0, metadata=about("decoding processes; 0 = one per core"))
    log_data: bool = field(default=True, metadata=about("log the cache as run artifacts"))
    max_pixels: int = field(
        default=DEFAULT_MAX_PIXELS,
        metadata=about("images or masks with more pixels are bad rows, never decoded"),
    )

    def __post_init__(self) -> None:
        check_preprocess(
            self.image_size,
            self.val_fraction,
            self.test_fraction,
            self.max_pixels,
            self.output_format,
            self.output_dir,
        )


@dataclass(frozen=True)
class EvaluateParams:
    """Score any MLflow model on the test split: Dice, IoU, precision, recall, and figures of
    the best and worst images, logged against the model."""

    model_uri: str = field(metadata=about("any MLflow model URI: runs:/..., models:/..."))
    data_dir: str = field(default="data/processed", metadata=about("cache folder or artifact URI"))
    batch_size: int = field(default=8, metadata=about("images per forward pass"))
    tta: bool = field(default=False, metadata=about(TTA_HELP))

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise PipelineError(f"parameter batch_size={self.batch_size} must be at least 1")


@dataclass(frozen=True)
class HistoryParams:
    """Every move of an alias, oldest first: when, which version took it from which, both test
    Dice scores and the promote run that decided. Read from the tracking store; writes nothing."""

    model_name: str = same_as(PromoteParams, "model_name")
    alias: str = same_as(PromoteParams, "alias")

    def __post_init__(self) -> None:
        check_name(self.model_name)
        check_alias(self.alias)


@dataclass(frozen=True)
class PredictParams:
    """A mask, an overlay and a row of predictions.csv for every photo in a folder, with any
    MLflow model."""

    input_dir: str = field(metadata=about("folder of photos (any size and mode), searched deeply"))
    model_uri: str = field(
        default="models:/unet-person@champion", metadata=about("any MLflow model URI")
    )
    output_dir: str = field(
        default="predictions", metadata=about("where masks/, overlays/ and predictions.csv go")
    )
    threshold: float = field(default=0.5, metadata=about("P(person) above which a pixel is one"))
    runtime: str = field(
        default="torch",
        metadata=about("torch, or onnx: the model's ONNX export run by ONNX Runtime on the CPU"),
    )
    tta: bool = field(default=False, metadata=about(TTA_HELP))

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        check_runtime(self.runtime)


@dataclass(frozen=True)
class PredictSparkParams:
    """predict for photo libraries, on Apache Spark: the model as MLflow's Spark UDF over a
    folder or an s3:// prefix, the masks (and overlays when asked) written to a folder or an
    s3:// prefix, and the results table as Parquet and CSV; bad files are rows, not crashes."""

    input: str = field(metadata=about("folder or s3://bucket/prefix of photos, searched deeply"))
    model_uri: str = same_as(PredictParams, "model_uri")
    output: str = field(
        default="predictions",
        metadata=about(
            "folder or s3://bucket/prefix for masks/, overlays/ and predictions.parquet/.csv"
        ),
    )
    threshold: float = same_as(PredictParams, "threshold")
    runtime: str = same_as(PredictParams, "runtime")
    tta: bool = same_as(PredictParams, "tta")
    overlays: bool = field(default=False, metadata=about("also write overlays/<name>.jpg"))
    spark_master: str = field(
        default="local[*]",
        metadata=about("Spark master URL: local[N], spark://host:7077, yarn, k8s://..."),
    )
    env_manager: str = field(
        default="local",
        metadata=about(
            "the model's Python on the executors: local (this one), or virtualenv, uv or conda "
            "(made from the model's requirements, for clusters without this project)"
        ),
    )
    partition_photos: int = field(
        default=256, metadata=about("photos per Spark task: the unit of work and of retry")
    )
    batch_photos: int = field(
        default=16,
        metadata=about(
            "photos an executor holds at once (its Arrow batches): bounds its memory whatever "
            "the photo count"
        ),
    )

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        check_runtime(self.runtime)
        check_location("input", self.input)
        check_location("output", self.output)
        if self.env_manager not in ENV_MANAGERS:
            raise PipelineError(
                f"parameter env_manager={self.env_manager!r} is not one of "
                f"{', '.join(ENV_MANAGERS)}"
            )
        for name in ("partition_photos", "batch_photos"):
            if getattr(self, name) < 1:
                raise PipelineError(f"parameter {name}={getattr(self, name)} must be at least 1")


@dataclass(frozen=True)
class ExportParams:
    """Write a logged model's network as one ONNX file (uint8 photos in, logits out; free batch
    size, height and width), check it against PyTorch in ONNX Runtime, and log both. In the
    trainer image output_path is inside the container: take the file from the run's artifacts."""

    model_uri: str = same_as(PredictParams, "model_uri")
    output_path: str = field(
        default="unet-person.onnx", metadata=about("the .onnx file to write (folders are made)")
    )
    opset: int = field(default=DEFAULT_OPSET, metadata=about("ONNX opset of the file, 18 to 23"))

    def __post_init__(self) -> None:
        check_opset(self.opset)


@dataclass(frozen=True)
class DemoParams:
    """A page in the browser to try a model on your own photos: each photo beside its mask and
    overlay, with the person's share, the time taken, a threshold slider and the mask to
    download. It serves until stopped (Ctrl-C) and logs no run. In the trainer image 127.0.0.1
    is the container's own: `-A network=host`, or the compose service `demo`."""

    model_uri: str = same_as(PredictParams, "model_uri")
    host: str = field(
        default="127.0.0.1",
        metadata=about("address the page listens on; 0.0.0.0 opens it to the network"),
    )
    port: int = field(default=8000, metadata=about("port the page listens on"))
    threshold: float = field(
        default=0.5, metadata=about("the slider's first P(person) above which a pixel is one")
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
    processed_format: str = same_as(PreprocessParams, "output_format")
    image_size: int = same_as(PreprocessParams, "image_size")
    val_fraction: float = same_as(PreprocessParams, "val_fraction")
    test_fraction: float = same_as(PreprocessParams, "test_fraction")
    split_seed: int = same_as(PreprocessParams, "seed")
    strict: bool = same_as(PreprocessParams, "strict")
    log_data: bool = same_as(DownloadParams, "log_data")
    max_pixels: int = same_as(PreprocessParams, "max_pixels")

    def __post_init__(self) -> None:
        source_kind(self.source)
        check_preprocess(
            self.image_size,
            self.val_fraction,
            self.test_fraction,
            self.max_pixels,
            self.processed_format,
            self.processed_dir,
        )


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise PipelineError(
            f"parameter runtime={runtime!r} is not one of {', '.join(RUNTIMES)}: torch runs the "
            "network in PyTorch, onnx the model's ONNX export in ONNX Runtime"
        )


def check_threshold(threshold: float) -> None:
    if not 0 < threshold < 1:
        raise PipelineError(f"parameter threshold={threshold} must be between 0 and 1 (exclusive)")


def is_optional(kind: Any) -> bool:
    """`int | None`: a setting whose empty value is "the recipe's"."""
    return type(None) in typing.get_args(kind)


def convert(params_class: type, name: str, text: Any) -> Any:
    """The typed value of parameter `name` given as text, or a PipelineError naming it.

    An optional parameter (`int | None`) given as empty text is None: "take the recipe's".
    """
    kind = parameter(params_class, name).kind
    if is_optional(kind):
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
    # Nested parts under their titles; a command's own parameters under OWN_PARAMETERS when
    # it has nested parts too (else argparse's "options").
    own = getattr(params_class, "OWN_PARAMETERS", None)
    groups: dict[str, Any] = {} if own else {"": parser}
    for found in parameters(params_class):
        if found.group not in groups:
            groups[found.group] = parser.add_argument_group(found.group or own)
        shown = "required" if found.required else f"default: {shown_default(found)}"
        if found.default is None and found.presets:
            shown += "; empty: the recipe's"
        groups[found.group].add_argument(
            f"--{found.name}",
            required=found.required,
            default=None if found.required else text_of(found.default),
            metavar=found.name.upper(),
            help=f"{found.help} ({shown})",
        )
    # MLflow's Kubernetes backend runs the command without a shell, each word still quoted for
    # one (mlflow/projects/kubernetes.py, _get_run_command): `''` for an empty value.
    known, unknown = parser.parse_known_args(argv)
    if unknown:
        raise PipelineError(
            unrecognized(unknown[0], [found.name for found in parameters(params_class)])
        )
    given = {name: shell_unquoted(text) for name, text in vars(known).items()}
    for found in parameters(params_class):
        if found.required and not given[found.name].strip():
            # argparse takes `--model_uri ''`; the step would open a run and fail inside it.
            raise PipelineError(
                f"parameter {found.name} is required but was given empty: give {found.help}"
            )
    return built(
        params_class, {name: convert(params_class, name, text) for name, text in given.items()}
    )


def unrecognized(argument: str, names: list[str]) -> str:
    """One line for an argument no parameter takes, with the nearest name (difflib)."""
    wanted = argument.split("=", 1)[0].lstrip("-")
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
    if not close:
        close = [name for name in names if wanted and (wanted in name or name in wanted)][:1]
    hint = f": did you mean --{close[0]}?" if close else "; --help lists the parameters"
    return f"unrecognized argument {argument}{hint}"


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
    values = params if isinstance(params, Mapping) else flat_values(params)
    return {name: text_of(value) for name, value in values.items()}


def text_of(value: Any) -> str:
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
