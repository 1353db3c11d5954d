"""The Optuna study of a `tune`: made or loaded from its storage, checked against the search it
was made for, and swept of trials whose worker died.

Storage: `journal:<file>` by default, Optuna's journal file, which its docs recommend over plain
SQLite for several processes on one machine (appends under a file lock, no database to lock);
any RDB URL (PostgreSQL for workers on several machines) is taken too. A trial records the lock
its worker holds while it lives (pipeline/locks.py): a RUNNING trial whose lock is free belongs
to a dead worker, wherever the storage is, so it is failed and its params are queued again; its
train run then resumes from its checkpoint under the next worker. RDB storages also heartbeat.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline import locks
from pipeline.errors import PipelineError, first_line
from pipeline.tracking.runs import masked
from pipeline.training.pruning import HEARTBEAT_SECONDS, open_storage

SAMPLERS = ("tpe", "random")
DIRECTION = "maximize"  # val Dice
SPACE_ATTR = "search_space"
WORKER_LOCK_ATTR = "worker_lock"
RETRY_OF_ATTR = "retry_of"
RDB_SCHEMES = ("postgresql", "mysql")


def default_storage(output_dir: str) -> str:
    return f"journal:{Path(output_dir).expanduser().resolve() / 'optuna-journal.log'}"


def check_storage_url(url: str) -> None:
    """The form of a storage URL, checked while parsing (its reachability when the study opens).

    SQLite is refused: it ignores the row lock Optuna's RDB storage takes, so workers asking at
    the same moment can both take one queued trial (tests/search/test_storage_claims.py;
    docs/tune.md). A password is refused too: the URL is a param, logged with the run and shown by
    `ps`; PostgreSQL's client reads PGPASSWORD or ~/.pgpass instead.
    """
    if url.startswith("journal:"):
        if not url.removeprefix("journal:").strip():
            raise PipelineError("parameter storage=journal: names no file: give journal:<path>")
        return
    scheme = url.partition("://")[0].partition("+")[0]
    if scheme == "sqlite":
        raise PipelineError(
            f"parameter storage={url!r}: SQLite lets two workers take one trial; give "
            "journal:<file> on one machine, or a PostgreSQL or MySQL URL"
        )
    if "://" not in url or scheme not in RDB_SCHEMES:
        raise PipelineError(
            f"parameter storage={url!r} is no Optuna storage: give journal:<file> (one machine), "
            "or a database URL (postgresql+psycopg2://user@host/optuna)"
        )
    if urlsplit(url).password is not None:
        raise PipelineError(
            f"parameter storage={masked(url)!r} holds a password, which would be logged with the "
            "run's params: leave it out and set PGPASSWORD (or ~/.pgpass)"
        )


def make_sampler(name: str, seed: int) -> Any:
    import optuna

    if name == "tpe":
        # Several workers at once: constant liar keeps them from all trying the same point.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise PipelineError(f"parameter sampler={name!r} is not one of {', '.join(SAMPLERS)}")


def open_study(
    storage_url: str, study_name: str, space: tuple[str, ...], sampler: Any, pruner: Any
) -> tuple[Any, Any]:
    """The study `study_name` (made if new) and its storage; a study made for another search
    space, or that minimises, is refused."""
    import optuna

    try:
        storage = open_storage(storage_url)
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            direction=DIRECTION,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )
    except Exception as error:
        if not (isinstance(error, ImportError) or is_storage_error(error)):
            raise
        raise PipelineError(
            f"cannot open the Optuna storage {storage_url} ({first_line(str(error))}): fix "
            "parameter storage, or start its database"
        ) from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise PipelineError(
            f"parameter study_name={study_name!r}: that study in {storage_url} minimises; tune "
            "maximises val Dice: choose another study_name"
        )
    made_for = study.user_attrs.get(SPACE_ATTR)
    if made_for is None:
        study.set_user_attr(SPACE_ATTR, list(space))
    elif tuple(made_for) != space:
        raise PipelineError(
            f"parameter study_name={study_name!r}: that study searches {', '.join(made_for)}, "
            f"not {', '.join(space)}: give the same search_space, or another study_name"
        )
    return study, storage


def is_storage_error(error: BaseException) -> bool:
    """An error of the study's storage: its file (OSError), or its database (SQLAlchemy's
    errors for an RDB that is down or refuses us, and Optuna's wrapping of them)."""
    import optuna

    return isinstance(error, (OSError, optuna.exceptions.StorageInternalError)) or type(
        error
    ).__module__.startswith("sqlalchemy")


def sweep_dead_workers_trials(study: Any, storage: Any) -> list[int]:
    """Fail each RUNNING trial whose worker is dead and queue its params again; returns their
    numbers. A worker on this machine is dead when its lock is free; one elsewhere when its
    heartbeat (an RDB storage's) is older than the grace period."""
    import optuna

    running = optuna.trial.TrialState.RUNNING
    swept = []
    for trial in study.get_trials(deepcopy=False, states=(running,)):
        lock = trial.user_attrs.get(WORKER_LOCK_ATTR)
        if lock is None or locks.is_held(Path(lock)) is not False:
            continue  # alive, or on another machine's disk: its heartbeat decides
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={RETRY_OF_ATTR: trial.number})
        swept.append(trial.number)
    if isinstance(storage, optuna.storages.RDBStorage):
        before = {trial.number for trial in study.get_trials(deepcopy=False, states=(running,))}
        optuna.storages.fail_stale_trials(study)  # RetryFailedTrialCallback queues them again
        after = {trial.number for trial in study.get_trials(deepcopy=False, states=(running,))}
        swept += sorted(before - after)
    return swept


@contextmanager
def heartbeat(storage: Any, study: Any, trial_number: int) -> Iterator[None]:
    """Beats for the trial while it runs, where the storage keeps heartbeats (an RDB)."""
    import optuna

    if not isinstance(storage, optuna.storages.RDBStorage):
        yield
        return
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), trial_number
    )
    stopped = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stopped.wait(HEARTBEAT_SECONDS):
                return

    beating = threading.Thread(target=beat, name=f"heartbeat of trial {trial_number}", daemon=True)
    beating.start()
    try:
        yield
    finally:
        stopped.set()
        beating.join()


def state_counts(study: Any) -> dict[str, int]:
    """Trials by state: complete, pruned, fail, running, waiting."""
    import optuna

    counts = {state.name.lower(): 0 for state in optuna.trial.TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name.lower()] += 1
    return counts


def _takes_a_place(trial: Any) -> bool:
    """Finished, pruned or running: a trial that counts towards n_trials or will."""
    import optuna

    states = optuna.trial.TrialState
    return trial.state in (states.COMPLETE, states.PRUNED, states.RUNNING)


def taken_trials(study: Any) -> int:
    """Trials that fill n_trials, now or once they end (failed ones are retried, not counted)."""
    return sum(map(_takes_a_place, study.get_trials(deepcopy=False)))


def finished_trials(study: Any) -> int:
    """Complete or pruned trials: the ones n_trials counts."""
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=done))


def trials_before(study: Any, number: int) -> int:
    """Trials before trial `number` that fill n_trials: the budget is first come, first served."""
    return sum(
        _takes_a_place(trial) for trial in study.get_trials(deepcopy=False) if trial.number < number
    )
