"""Four `promote` processes on one model at once: every one exits 0, the model is one version,
the alias points at it, and its record names one of the four runs as the one that moved it.

On one machine (SQLite, one cache folder) the promotion lock lets the first process decide and
the others find its result. Processes with cache folders of their own share no lock, as on
different machines against one server: there the registry side must converge by itself, which
the Postgres-backed server shows. Each case runs two rounds: a first promotion, then a better
model taking the alias from the champion. Processes start seconds apart on a busy machine, so
the last test lines threads up at the two racy writes themselves (registering, setting the
alias) against the same server.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline.entrypoints import evaluate
from pipeline.registry import versions
from pipeline.registry.versions import register_once, set_alias, set_version_tags
from pipeline.tracking.tags import ENTRY_POINT_TAG
from tests.conftest import isolated_environment
from tests.segmenters import constant_net, log_model, split_cache
from tests.stack.stack import (
    Server,
    client_environment,
    run_entry_point,
)

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

NAME = "unet-person"
PROMOTERS = 4
# One constant model per round: Dice 0 takes the free alias (min_dice 0), then an all-person
# model (Dice > 0) takes it from that champion.
ROUND_LOGITS = [-20.0, 20.0]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return split_cache(tmp_path_factory.mktemp("split"))


def evaluated(model_uri: str, split: Path) -> str:
    """`model_uri` with an evaluate run on `split`, as main's promote finds it: the promoters
    read its test Dice instead of each loading PyTorch to score the model again."""
    assert evaluate.main(["--model_uri", model_uri, "--data_dir", str(split)]) == 0
    return model_uri


def promote_at_once(model_uri: str, split: Path, envs: list[dict[str, str]]) -> None:
    """One `python -m pipeline promote` process per environment, all started together."""
    params = {"model_uri": model_uri, "data_dir": str(split), "min_dice": "0"}
    with ThreadPoolExecutor(len(envs)) as pool:
        results = list(pool.map(lambda env: run_entry_point("promote", params, env), envs))
    failed = [result.stderr[-3000:] for result in results if result.returncode != 0]
    assert not failed, failed


def check_round(client: MlflowClient, model_uri: str, champion: str | None, locked: bool) -> str:
    """The state after one round of concurrent promotes of `model_uri`; returns its version."""
    model_id = mlflow.models.get_model_info(model_uri).model_id
    versions = client.search_model_versions(f"name = '{NAME}'")
    mine = [v for v in versions if v.source == f"models:/{model_id}"]  # stores keep no model_id
    assert len(mine) == 1, [(v.version, v.source) for v in versions]
    version = mine[0]
    assert str(client.get_registered_model(NAME).aliases["champion"]) == str(version.version)

    experiment = client.get_experiment_by_name("unet-person")
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`{ENTRY_POINT_TAG}` = 'promote' and params.model_uri = '{model_uri}'",
    )
    assert len(runs) == PROMOTERS
    by_id = {run.info.run_id: run.data.tags for run in runs}
    record = version.tags
    assert record["unet_person.decision"] == "promoted"
    assert record["unet_person.champion_version"] == (champion or "none")
    decider = by_id[record["unet_person.promote_run_id"]]
    assert decider["unet_person.decision"] == "promoted"
    assert {tags["unet_person.model_version"] for tags in by_id.values()} == {str(version.version)}
    others = [tags["unet_person.decision"] for tags in by_id.values() if tags is not decider]
    if locked:
        assert others == ["unchanged"] * (PROMOTERS - 1)
    else:
        assert set(others) <= {"promoted", "unchanged"}
    return str(version.version)


def test_concurrent_promotes_on_one_machine_decide_once(tmp_path: Path, split: Path) -> None:
    env = isolated_environment(tmp_path)  # the same store and cache folder as this process
    client = MlflowClient()
    champion = None
    for logit in ROUND_LOGITS:
        model_uri = evaluated(log_model(constant_net(logit)), split)
        promote_at_once(model_uri, split, [env] * PROMOTERS)
        champion = check_round(client, model_uri, champion, locked=True)
    assert len(client.search_model_versions(f"name = '{NAME}'")) == len(ROUND_LOGITS)


def test_concurrent_promotes_from_many_machines_converge_on_the_server(
    tmp_path: Path, split: Path, server: Server
) -> None:
    env = client_environment(tmp_path, server)
    machines = [
        {**env, "UNET_PERSON_CACHE": str(tmp_path / f"machine-{index}")}
        for index in range(PROMOTERS)
    ]
    mlflow.set_tracking_uri(server.url)
    client = MlflowClient(tracking_uri=server.url)
    champion = None
    for logit in ROUND_LOGITS:
        model_uri = evaluated(log_model(constant_net(logit)), split)
        promote_at_once(model_uri, split, machines)
        champion = check_round(client, model_uri, champion, locked=False)
    assert len(client.search_model_versions(f"name = '{NAME}'")) == len(ROUND_LOGITS)


def test_registrations_alias_and_tag_writes_that_race_converge_on_the_server(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No lock: every writer finds no version, then all register together, set each alias
    together and write each version tag together. Two inserts of one row clash on its UNIQUE key
    about one time in ten here (psycopg2 UniqueViolation, answered as BAD_REQUEST), so several
    aliases and tags are raced."""
    mlflow.set_tracking_uri(server.url)
    model_id = mlflow.models.get_model_info(log_model(constant_net(20.0))).model_id
    name = f"race-{uuid.uuid4().hex[:8]}"
    aliases = [f"alias{index}" for index in range(10)]
    real_register = versions.register
    all_checked = threading.Barrier(PROMOTERS)
    all_ready = threading.Barrier(PROMOTERS)
    made: list[str] = []

    def register_after_every_check(model_name: str, model: str) -> str:
        all_checked.wait(timeout=60)
        made.append(real_register(model_name, model))
        return made[-1]

    def promote_without_lock(index: int) -> str:
        client = MlflowClient(tracking_uri=server.url)
        version = register_once(client, name, model_id)
        for alias in aliases:
            all_ready.wait(timeout=60)
            set_alias(client, name, alias, version)
            all_ready.wait(timeout=60)
            set_version_tags(client, name, version, {alias: str(index)})
        return version

    monkeypatch.setattr(versions, "register", register_after_every_check)
    with ThreadPoolExecutor(PROMOTERS) as pool:
        kept = list(pool.map(promote_without_lock, range(PROMOTERS)))
    client = MlflowClient(tracking_uri=server.url)
    assert len(made) == PROMOTERS  # every writer registered...
    assert kept == [min(made, key=int)] * PROMOTERS  # ...and all kept the first version
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == kept[:1]
    pointers = client.get_registered_model(name).aliases
    assert {alias: str(version) for alias, version in pointers.items()} == dict.fromkeys(
        aliases, kept[0]
    )
    tags = client.get_model_version(name, kept[0]).tags
    assert {tags.get(alias) for alias in aliases} <= {str(index) for index in range(PROMOTERS)}
