"""Parameters of the entry points that train: train, main, ablate and tune.

Training's settings are declared once, in the configs they configure (`Recipe` and the configs
it nests, `RuntimeConfig`; pipeline/settings.py). These classes nest those configs and the data
params (`runtime: RuntimeConfig`, `data: DataSourceParams`, the recipe's settings as
`TrainingParams.changes`); each of their settings is a parameter of the same name and help
(pipeline/params.py, `parameters`), and every part checks its values as it is built, before any
run opens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.errors import PipelineError
from pipeline.params import DataSourceParams, PromoteParams, overrides, same_as
from pipeline.registry.request import check_promotion
from pipeline.search.space import DEFAULT_SPACE, parse_search_space, searchable
from pipeline.search.study import SAMPLERS, check_storage_url
from pipeline.settings import about
from pipeline.study.variants import PlannedVariant, parse_seeds, plan_variants
from pipeline.training.pruning import PRUNERS
from pipeline.training.recipes import RECIPES, Recipe, resolve_recipe
from pipeline.training.runtime import RuntimeConfig

# Epochs of each trial of `tune` unless given: a search ranks settings, and the ranking shows
# long before a fit converges (what its pruners and Hyperband rely on); the recipe's 100 epochs
# are the budget of the one model that is kept. At 64 px on 2 cores this is what makes the
# documented search (docs/tune.md) take minutes, not hours.
TRIAL_EPOCHS = 10

# The recipe a command trains unless told, shown first where --help gives each recipe's value.
DEFAULT_RECIPE = "default"
PRESETS = dict(sorted(RECIPES.items(), key=lambda preset: preset[0] != DEFAULT_RECIPE))

# The titles of the nested parts, as `--help` groups their parameters.
DATA = about("data: where the photos come from, how they are checked and split")
TRAINING = about("recipe and network: what is fitted (an empty setting takes the recipe's)")
RUNTIME = about("training runtime: where and how long each fit runs")

# The settings an architecture study sets for every variant alike.
STUDY_OVERRIDES = ("max_epochs", "patience", "batch_size", "base_channels")


@dataclass(frozen=True)
class TrainingParams:
    """The recipe and the settings that override it: what `train` fits, and what `main`,
    `ablate` and `tune` hand their train steps."""

    recipe: str = field(
        default=DEFAULT_RECIPE,
        metadata=about("paper (the reference exactly) or default; the settings below override it"),
    )
    # One optional parameter per setting of the recipe (pipeline/settings.py), None its own.
    changes: Mapping[str, Any] = overrides(Recipe, PRESETS)
    seed: int = field(default=42, metadata=about("seed of weights and data order"))
    grid_every: int = field(
        default=5, metadata=about("epochs between prediction grids of fixed val images")
    )
    onnx: bool = field(
        default=True,
        metadata=about(
            "log the network's ONNX export inside the model (for runtime onnx and runtimes "
            "without PyTorch); false saves its seconds per model, and `export` can write it later"
        ),
    )

    def __post_init__(self) -> None:
        self.recipe_config()

    def recipe_config(self) -> Recipe:
        """The recipe these params name, with their settings in place of its own."""
        return resolve_recipe(self.recipe, self.changes)


@dataclass(frozen=True)
class TrialTraining(TrainingParams):
    """A trial's training: as any, but for fewer epochs unless told."""

    changes: Mapping[str, Any] = overrides(
        Recipe,
        PRESETS,
        defaults={"max_epochs": TRIAL_EPOCHS},
        helps={
            "max_epochs": f"epochs of each trial (default {TRIAL_EPOCHS}, not the recipe's: "
            "trials rank settings; train the winner longer with main)"
        },
    )


@dataclass(frozen=True)
class TrainParams:
    """Fit the U-Net on the preprocessed cache and log the best model into the run. With
    several devices or num_nodes > 1 it runs one process per device (DDP): batch_size is per
    device, and only the first process logs into the run (docs/gpus.md, "Several GPUs (DDP)")."""

    OWN_PARAMETERS: ClassVar[str] = "input"

    training: TrainingParams = field(default_factory=TrainingParams, metadata=TRAINING)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig, metadata=RUNTIME)
    data_dir: str = field(
        default="data/processed", metadata=about("preprocess output folder or its artifact URI")
    )


@dataclass(frozen=True)
class MainParams:
    """The whole pipeline under one parent run: download, preprocess, train, evaluate and
    promote, reusing any step already finished with the same inputs and resuming an interrupted
    training from its checkpoint."""

    OWN_PARAMETERS: ClassVar[str] = "steps, tracking and promotion"

    data: DataSourceParams = field(default_factory=DataSourceParams, metadata=DATA)
    training: TrainingParams = field(default_factory=TrainingParams, metadata=TRAINING)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig, metadata=RUNTIME)
    reuse: bool = field(default=True, metadata=about("reuse finished steps with equal inputs"))
    promote: bool = field(default=True, metadata=about("end with promote; false stops at evaluate"))
    model_name: str = same_as(PromoteParams, "model_name")
    alias: str = same_as(PromoteParams, "alias")
    min_improvement: float = same_as(PromoteParams, "min_improvement")
    min_dice: float = same_as(PromoteParams, "min_dice")

    def __post_init__(self) -> None:
        check_promotion(self.model_name, self.alias, self.min_improvement, self.min_dice)


@dataclass(frozen=True)
class AblateParams:
    """The architecture study: the baseline recipe and variants that each change one thing,
    trained and evaluated under one parent run, summarised in a table and a chart."""

    OWN_PARAMETERS: ClassVar[str] = "the study"

    data: DataSourceParams = field(default_factory=DataSourceParams, metadata=DATA)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig, metadata=RUNTIME)
    recipe: str = field(
        default="default",
        metadata=about("the study's baseline; each variant changes one thing"),
    )
    variants: str = field(
        default="all",
        metadata=about(
            "comma-separated variant names (docs/recipes.md); all is every one but encoder "
            "(e.g. all,encoder)"
        ),
    )
    seeds: str = field(default="42", metadata=about("comma-separated seeds, one run per seed"))
    max_epochs: int | None = field(default=None, metadata=about("epoch budget of every variant"))
    patience: int | None = field(
        default=None, metadata=about("early-stopping patience of every variant")
    )
    batch_size: int | None = field(
        default=None, metadata=about("batch size of every variant, per device")
    )
    base_channels: int | None = field(
        default=None, metadata=about("baseline width; width variants halve and double it")
    )
    onnx: bool = same_as(TrainingParams, "onnx")
    reuse: bool = field(
        default=True,
        metadata=about("reuse finished runs: a stopped study picks up where it was"),
    )
    output_dir: str = field(
        default="ablation", metadata=about("local folder for the summary table and chart")
    )

    def __post_init__(self) -> None:
        self.study_plan()

    def study_plan(self) -> tuple[list[PlannedVariant], list[int]]:
        """The variants and seeds to run."""
        overrides = {name: getattr(self, name) for name in STUDY_OVERRIDES}
        return plan_variants(self.variants, self.recipe, overrides), parse_seeds(self.seeds)


@dataclass(frozen=True)
class TuneParams:
    """A hyperparameter search on Optuna whose every trial is a train step: a child run of this
    one, reused when its settings were trained before and resumed when it was interrupted; the
    best trial's model is evaluated and promoted as `main`'s is. The settings not searched are
    the recipe's, or the ones given here."""

    OWN_PARAMETERS: ClassVar[str] = "the search and promotion"

    data: DataSourceParams = field(default_factory=DataSourceParams, metadata=DATA)
    training: TrialTraining = field(default_factory=TrialTraining, metadata=TRAINING)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig, metadata=RUNTIME)
    search_space: str = field(
        default=DEFAULT_SPACE,
        metadata=about(
            "settings to search: default (every one with a declared range: "
            + ", ".join(searchable())
            + "), or a comma list of them"
        ),
    )
    n_trials: int = field(
        default=20, metadata=about("finished (or pruned) trials of the study, across every worker")
    )
    timeout: int = field(
        default=0, metadata=about("seconds this command starts trials for; 0 = no limit")
    )
    workers: int = field(
        default=1,
        metadata=about(
            "trials this command trains at once, each in its own train process; more commands "
            "with the same study_name and storage join the study from anywhere"
        ),
    )
    study_name: str = field(default="unet-person", metadata=about("the Optuna study's name"))
    storage: str = field(
        default="",
        metadata=about(
            "Optuna storage: journal:<file>, or a database URL shared by workers on several "
            "machines (postgresql+psycopg2://...); empty = journal:<output_dir>/optuna-journal.log"
        ),
    )
    sampler: str = field(default="tpe", metadata=about("tpe or random"))
    pruner: str = field(
        default="median", metadata=about("median, hyperband or none: stops trials that lag")
    )
    reuse: bool = field(
        default=True, metadata=about("reuse trained runs of the same settings and data")
    )
    promote: bool = same_as(MainParams, "promote")
    model_name: str = same_as(PromoteParams, "model_name")
    alias: str = same_as(PromoteParams, "alias")
    min_improvement: float = same_as(PromoteParams, "min_improvement")
    min_dice: float = same_as(PromoteParams, "min_dice")
    output_dir: str = field(
        default="tune", metadata=about("local folder for trials.csv, the figures and the journal")
    )

    def __post_init__(self) -> None:
        searched = parse_search_space(self.search_space)
        fixed = [name for name in searched if name in self.training.changes]
        if fixed:
            raise PipelineError(
                f"parameter search_space searches {', '.join(fixed)}, which this command also "
                "sets: leave it out of one of the two"
            )
        if self.n_trials < 1:
            raise PipelineError(f"parameter n_trials={self.n_trials} must be at least 1")
        if self.workers < 1:
            raise PipelineError(f"parameter workers={self.workers} must be at least 1")
        if self.timeout < 0:
            raise PipelineError(f"parameter timeout={self.timeout} must be 0 (none) or more")
        if not self.study_name.strip():
            raise PipelineError("parameter study_name is empty: name the study")
        if self.storage:
            check_storage_url(self.storage)
        if self.sampler not in SAMPLERS:
            raise PipelineError(
                f"parameter sampler={self.sampler!r} is not one of {', '.join(SAMPLERS)}"
            )
        if self.pruner not in PRUNERS:
            raise PipelineError(
                f"parameter pruner={self.pruner!r} is not one of {', '.join(PRUNERS)}"
            )
        check_promotion(self.model_name, self.alias, self.min_improvement, self.min_dice)
