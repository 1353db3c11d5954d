"""`tune`'s inputs (issue 22): the search space read from the settings' own declarations, and
every bad parameter refused in one line that names it, before any MLflow run exists."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from pipeline.entrypoints import tune
from pipeline.errors import PipelineError
from pipeline.params import parse
from pipeline.search.space import parse_search_space, searchable, suggest
from pipeline.search.study import open_study
from pipeline.settings import between, declared, one_of, setting
from pipeline.training.pruning import make_pruner, open_storage
from pipeline.training.recipes import resolve_recipe
from pipeline.training_params import TuneParams
from tests.conftest import free_port

DEFAULT_SPACE = ("base_channels", "lr", "weight_decay", "loss", "augment", "ema_decay")


def test_the_default_space_is_every_declared_range() -> None:
    assert set(parse_search_space("default")) == set(DEFAULT_SPACE)
    assert parse_search_space(" lr , loss ") == ("lr", "loss")
    for name, search in searchable().items():
        assert search.why, f"{name}'s range says nowhere where it comes from"


def test_a_declared_range_becomes_a_searched_setting_without_tune_code() -> None:
    @dataclasses.dataclass
    class Config:
        clip: float = setting(0.0, "gradient clipping", minimum=0, search=between(0.1, 10, "x"))

    ((_, _, spec),) = declared(Config)
    assert spec.metadata["search"].describe() == "float uniform in [0.1, 10]"


@pytest.mark.parametrize(
    "declare",
    [
        lambda: setting(1e-3, "lr", above=0, search=between(0.0, 1.0, "from zero")),
        lambda: setting("bce", "loss", choices=("bce",), search=one_of("bce", "focal", why="x")),
        lambda: setting(0.5, "p", minimum=0, below=1, search=between(0.5, 1.0, "to one")),
        lambda: setting(0.5, "p", search=between(0.6, 0.6, "empty")),
    ],
    ids=["not above", "not a choice", "not below", "empty"],
)
def test_a_range_outside_the_settings_allowed_values_fails_where_it_is_declared(declare) -> None:
    with pytest.raises(ValueError, match="search"):
        declare()


def test_every_suggestion_is_a_value_the_recipe_takes() -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for _ in range(30):
        settings = suggest(study.ask(), parse_search_space("default"))
        resolve_recipe("default", settings)  # raises on a value the recipe refuses
        assert 1e-4 <= settings["lr"] <= 1e-2 and settings["base_channels"] in (16, 32, 64)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--search_space", "lr,focal"], r"search_space: 'focal' is no setting; searchable: "),
        (["--search_space", "depth"], r"search_space: setting 'depth' declares no search range"),
        (["--search_space", "lr,lr"], r"search_space='lr,lr' names a setting twice"),
        (["--search_space", " , "], r"search_space=' , ' names no setting"),
        (["--search_space", "lr,loss", "--lr", "0.001"], r"searches lr, which this command"),
        (["--n_trials", "0"], r"n_trials=0 must be at least 1"),
        (["--workers", "0"], r"workers=0 must be at least 1"),
        (["--timeout", "-5"], r"timeout=-5 must be 0"),
        (["--sampler", "grid"], r"sampler='grid' is not one of tpe, random"),
        (["--pruner", "asha"], r"pruner='asha' is not one of median, hyperband, none"),
        (["--storage", "redis://localhost"], r"storage='redis://localhost' is no Optuna storage"),
        (["--storage", "journal:"], r"storage=journal: names no file"),
        (["--storage", "sqlite:///o.db"], r"SQLite lets two workers take one trial"),
        (
            ["--storage", "postgresql://tuner:changeme@db/optuna"],
            re.escape("storage='postgresql://tuner:***@db/optuna' holds a password")
            + ".*PGPASSWORD",
        ),
        (["--study_name", " "], r"study_name"),
        (["--min_dice", "2"], r"min_dice"),
    ],
)
def test_bad_parameters_are_refused_as_parsed(argv: list[str], message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        parse(TuneParams, argv)


def no_runs_anywhere() -> bool:
    client = MlflowClient()
    return not client.search_runs([e.experiment_id for e in client.search_experiments()])


def refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert tune.main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


def test_an_unreachable_storage_is_one_line_and_no_run(capsys) -> None:
    storage = f"postgresql+psycopg2://tuner@127.0.0.1:{free_port()}/optuna"
    line = refused(["--storage", storage], capsys)
    assert line.startswith(f"tune: error: cannot open the Optuna storage {storage} (")
    assert "parameter storage" in line
    assert no_runs_anywhere()


def test_a_study_that_minimises_is_refused(tmp_path: Path, capsys) -> None:
    journal = f"journal:{tmp_path / 'journal.log'}"
    optuna.create_study(study_name="s", storage=open_storage(journal), direction="minimize")
    line = refused(["--storage", journal, "--study_name", "s"], capsys)
    assert "parameter study_name='s': that study" in line and "minimises" in line
    assert no_runs_anywhere()


def test_a_study_made_for_another_space_is_refused(tmp_path: Path, capsys) -> None:
    journal = f"journal:{tmp_path / 'journal.log'}"
    open_study(journal, "s", ("lr",), optuna.samplers.RandomSampler(), make_pruner("none", 1))
    line = refused(["--storage", journal, "--study_name", "s", "--search_space", "lr,loss"], capsys)
    assert "that study searches lr, not lr, loss" in line
    assert no_runs_anywhere()
    # The same space joins it.
    study, _ = open_study(journal, "s", ("lr",), optuna.samplers.RandomSampler(), None)
    assert study.user_attrs["search_space"] == ["lr"]


def test_a_storage_that_fails_mid_search_stops_with_how_to_go_on(tmp_path: Path) -> None:
    """The journal gone from under the study (a folder in its place, which even root cannot
    append to): the error becomes one line saying to run the command again."""
    from pipeline.orchestration.tuning import storage_failure

    journal = tmp_path / "study" / "journal.log"
    url = f"journal:{journal}"
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    journal.unlink()
    journal.mkdir()
    with pytest.raises(OSError) as raised:
        study.ask()
    failure = storage_failure(raised.value, url)
    assert isinstance(failure, PipelineError)
    assert "run the same tune command again" in str(failure) and url in str(failure)
    other = ValueError("not the storage")
    assert storage_failure(other, url) is other


def test_the_parameters_page_shows_every_declared_range_as_declared() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "parameters.md").read_text()
    for name, search in searchable().items():
        assert f"| `{name}` | {search.describe()} | {search.why} |" in page, name


def search_of(tmp_path: Path, objective) -> tuple[optuna.Study, object]:
    """A journal study of 3 trials and the Search of one command over it, whose trials are
    `objective`'s outcomes instead of train steps."""
    from pipeline.orchestration.tuning import Search

    storage = open_storage(f"journal:{tmp_path / 'journal.log'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")

    class Objective:
        params = parse(TuneParams, ["--n_trials", "3"])
        worker_lock = tmp_path / "worker.lock"

        def __call__(self, trial: optuna.Trial) -> float:
            return objective(trial)

    return study, Search(study, storage, Objective())


def test_a_trial_that_crashes_is_failed_with_its_reason_and_the_search_goes_on(
    tmp_path: Path,
) -> None:
    """Out of memory at a large width, say: the trial ends FAIL with the step's message and the
    search still fills n_trials with finished ones."""
    from pipeline.orchestration.tuning import FAILURE_ATTR, TrialFailed

    def objective(trial: optuna.Trial) -> float:
        if trial.number == 1:
            raise TrialFailed("step train failed: CUDA out of memory at base_channels 64")
        return 0.5 + trial.number / 10

    study, search = search_of(tmp_path, objective)
    search.loop(deadline=None)
    states = [trial.state for trial in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    (failed,) = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert "out of memory" in failed.user_attrs[FAILURE_ATTR]


def test_the_progress_bar_counts_every_workers_trials_and_names_the_best() -> None:
    """A command that joins a study with two trials done: the bar counts the study's trials,
    finished, pruned and failed, and the best so far."""
    from pipeline.orchestration.tuning import TrialsBar

    study = optuna.create_study(direction="maximize")
    state = optuna.trial.TrialState
    for value in (0.61, 0.7412):
        study.add_trial(optuna.trial.create_trial(value=value))
    bar = TrialsBar(study, n_trials=6)
    first = bar.line()
    assert re.search(r"^tune:\s+33%\|.*\| 2/6 trials .*, 2 complete, 0 pruned, 0 failed", first)
    study.add_trial(optuna.trial.create_trial(state=state.PRUNED))
    study.add_trial(optuna.trial.create_trial(state=state.FAIL))
    line = bar.line()
    assert " 3/6 trials " in line and " 50%|" in line
    assert line.endswith("2 complete, 1 pruned, 1 failed; best 0.7412 (trial 1)")


def test_trials_that_all_fail_stop_the_search_instead_of_looping(tmp_path: Path) -> None:
    """A cause the trials share (a broken install, a full disk): failed trials never fill
    n_trials, so the search stops after FAILURES_IN_A_ROW of them, with the last reason."""
    from pipeline.orchestration.tuning import FAILURES_IN_A_ROW, TrialFailed

    def objective(trial: optuna.Trial) -> float:
        if trial.number == 0:
            return 0.5  # a success before does not count: the failures are in a row
        raise TrialFailed(f"step train failed: no space left on device (trial {trial.number})")

    study, search = search_of(tmp_path, objective)
    with pytest.raises(PipelineError, match=rf"the last {FAILURES_IN_A_ROW} trials failed") as e:
        search.loop(deadline=None)
    assert f"no space left on device (trial {FAILURES_IN_A_ROW})" in str(e.value)
    states = [trial.state for trial in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == FAILURES_IN_A_ROW
    assert len(states) == FAILURES_IN_A_ROW + 1
