"""The registry side of concurrent promotions, without the promotion lock: processes on
different machines share none. Each test plays another process's write at the worst moment
(between two of our calls), or runs promotions in threads that all pass the "is it a version
yet?" check before any registers; the registry must still end with one version and the alias
where the decision put it.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.entrypoints import promote
from pipeline.errors import PipelineError
from pipeline.registry import versions
from pipeline.registry.versions import register_once, set_alias, set_version_tags
from pipeline.tracking import concurrent_writes
from pipeline.tracking.tags import ENTRY_POINT_TAG, ERROR_TAG
from tests.segmenters import constant_net, log_model, split_cache

NAME = "unet-person"
WRITERS = 4


@pytest.fixture
def model_id() -> str:
    return mlflow.models.get_model_info(log_model(constant_net(20.0))).model_id


@pytest.fixture
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(concurrent_writes, "WRITE_RETRY_SECONDS", 0.0)


def live_versions() -> list[str]:
    return sorted(str(v.version) for v in MlflowClient().search_model_versions(f"name = '{NAME}'"))


def test_a_duplicate_made_after_another_process_registered_is_deleted(
    model_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_register = versions.register

    def another_process_first(name: str, model: str) -> str:
        real_register(name, model)  # it passed the same check a moment before us
        return real_register(name, model)

    monkeypatch.setattr(versions, "register", another_process_first)
    assert register_once(MlflowClient(), NAME, model_id) == "1"
    assert live_versions() == ["1"]


def test_the_lowest_version_is_kept_by_the_process_that_made_it(
    model_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_register = versions.register

    def another_process_after(name: str, model: str) -> str:
        ours = real_register(name, model)
        real_register(name, model)  # its duplicate: that process deletes it, not we
        return ours

    monkeypatch.setattr(versions, "register", another_process_after)
    assert register_once(MlflowClient(), NAME, model_id) == "1"
    assert live_versions() == ["1", "2"]


def test_a_registration_given_up_on_takes_the_version_another_process_made(
    model_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_register = versions.register

    def clash(name: str, model: str) -> str:
        real_register(name, model)
        raise PipelineError("Model Version creation error. Giving up after 3 attempts.")

    monkeypatch.setattr(versions, "register", clash)
    assert register_once(MlflowClient(), NAME, model_id) == "1"


def test_a_registration_that_fails_alone_is_an_error(
    model_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(name: str, model: str) -> str:
        raise PipelineError("permission denied")

    monkeypatch.setattr(versions, "register", refused)
    with pytest.raises(PipelineError, match="permission denied"):
        register_once(MlflowClient(), NAME, model_id)


def test_writers_that_all_found_no_version_end_with_one(
    model_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_register = versions.register
    all_checked = threading.Barrier(WRITERS)
    one_at_a_time = threading.Lock()  # SQLite's writer lock, made explicit for threads

    made: list[str] = []

    def register_after_every_check(name: str, model: str) -> str:
        all_checked.wait(timeout=60)
        with one_at_a_time:
            made.append(real_register(name, model))
            return made[-1]

    monkeypatch.setattr(versions, "register", register_after_every_check)
    with ThreadPoolExecutor(WRITERS) as pool:
        kept = list(
            pool.map(lambda _: register_once(MlflowClient(), NAME, model_id), range(WRITERS))
        )
    assert sorted(made) == ["1", "2", "3", "4"]  # every writer made a version...
    assert kept == ["1"] * WRITERS  # ...and all use the first
    assert live_versions() == ["1"]


def refuse_once(
    monkeypatch: pytest.MonkeyPatch, method: str, before_refusing=lambda: None
) -> list[tuple]:
    """Make the next call of a registry write fail as a concurrent insert of the same row does;
    returns the arguments of every call."""
    real_write = getattr(MlflowClient, method)
    calls: list[tuple] = []

    def once_refused(self, *args: str) -> None:
        calls.append(args)
        if len(calls) == 1:
            before_refusing()
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed")
        real_write(self, *args)

    monkeypatch.setattr(MlflowClient, method, once_refused)
    return calls


def test_an_alias_another_process_set_to_our_version_is_accepted(
    model_id: str, monkeypatch: pytest.MonkeyPatch, no_waiting: None
) -> None:
    client = MlflowClient()
    version = register_once(client, NAME, model_id)
    real_set = MlflowClient.set_registered_model_alias
    calls = refuse_once(
        monkeypatch,
        "set_registered_model_alias",
        lambda: real_set(client, NAME, "champion", version),
    )
    set_alias(client, NAME, "champion", version)
    assert calls == [(NAME, "champion", version)]  # accepted on reading it back, not written again
    assert str(client.get_registered_model(NAME).aliases["champion"]) == version


def alias_of(client: MlflowClient) -> dict[str, str]:
    return {"champion": str(client.get_registered_model(NAME).aliases["champion"])}


def tags_of(client: MlflowClient) -> dict[str, str]:
    tags = client.get_model_version(NAME, "1").tags
    return {key: tags[key] for key in ("first", "second")}


@pytest.mark.parametrize(
    ("method", "write", "read_back", "wanted_calls"),
    [
        (
            "set_registered_model_alias",
            lambda client: set_alias(client, NAME, "champion", "1"),
            lambda client: alias_of(client) == {"champion": "1"},
            [(NAME, "champion", "1")] * 2,  # the refused write, then the retry
        ),
        (
            "set_model_version_tag",
            lambda client: set_version_tags(client, NAME, "1", {"first": "a", "second": "b"}),
            lambda client: tags_of(client) == {"first": "a", "second": "b"},
            [(NAME, "1", "first", "a"), (NAME, "1", "first", "a"), (NAME, "1", "second", "b")],
        ),
    ],
    ids=["alias", "version tag"],
)
def test_a_refused_registry_write_is_retried(
    model_id: str,
    monkeypatch: pytest.MonkeyPatch,
    no_waiting: None,
    method: str,
    write,
    read_back,
    wanted_calls: list[tuple],
) -> None:
    client = MlflowClient()
    assert register_once(client, NAME, model_id) == "1"
    calls = refuse_once(monkeypatch, method)
    write(client)
    assert [tuple(map(str, call)) for call in calls] == wanted_calls
    assert read_back(client)


def test_an_alias_that_cannot_be_set_leaves_no_promoted_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_waiting: None, capsys
) -> None:
    def always_refused(self, name: str, alias: str, version: str) -> None:
        raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed")

    real_set = MlflowClient.set_registered_model_alias
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", always_refused)
    cache = split_cache(tmp_path / "split", rows=8)
    model_uri = log_model(constant_net(20.0))
    argv = ["--model_uri", model_uri, "--data_dir", str(cache), "--min_dice", "0"]
    assert promote.main(argv) == 2
    assert "cannot point unet-person@champion at version 1 after 5 tries" in capsys.readouterr().err
    client = MlflowClient()
    registered = client.get_model_version(NAME, "1")
    assert registered.aliases == []
    assert "unet_person.decision" not in registered.tags
    (failed,) = client.search_runs(
        [client.get_experiment_by_name("unet-person").experiment_id],
        f"tags.`{ENTRY_POINT_TAG}` = 'promote'",
    )
    assert failed.info.status == "FAILED"  # it says what it decided, and that it failed
    assert failed.data.tags["unet_person.decision"] == "promoted"
    assert "cannot point" in failed.data.tags[ERROR_TAG]

    # Run again once the registry takes writes: the move happens and is recorded.
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real_set)
    assert promote.main(argv) == 0
    assert client.get_model_version(NAME, "1").tags["unet_person.decision"] == "promoted"
    assert str(client.get_registered_model(NAME).aliases["champion"]) == "1"
