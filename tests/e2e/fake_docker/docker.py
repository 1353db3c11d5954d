"""A stand-in for Docker, enough for `mlflow run` of a project with a `docker_env` on a machine
with no Docker engine: the `docker` command line and the few Engine API calls MLflow makes.

What MLflow asks of Docker (mlflow/projects/docker.py and backend/local.py, MLflow 3.17):
- `docker info` (the command): is an engine there?
- through the Docker SDK (`docker.from_env()`, which talks to DOCKER_HOST): `GET /version`, then
  `GET /images/json` filtered by the image's name and `GET /images/<id or name>/json`: is the
  image there, and its id and tags (MLflow tags the run with both). A missing image would be
  pulled (`POST /images/create`) and `--build-image` would build (`POST /build`): neither is
  served here; they, like anything else, get a 404 and are recorded.
- then, through bash in the project folder: `docker run --rm [-A options] -v ... -e ... IMAGE
  COMMAND`.

`docker run` here runs COMMAND on the host, as it would see the container:
- the container's files are a fresh copy of the image's folder ("Root" in images.json), where
  each `-v SOURCE:TARGET[:ro]` becomes a symlink from TARGET to SOURCE (SOURCE is made when
  missing, as docker does, and `:ro` is recorded, not enforced);
- its environment is the image's Env, absolute container paths in it mapped into that folder,
  plus each `-e NAME=VALUE`, and nothing of the environment `docker run` was called with;
- it starts in the image's WorkingDir, in that folder.
It runs as the caller's user, on the host's network whatever `--network` says, and is not
confined to its folder: an absolute container path given with `-e` would miss.

The state lives in $FAKE_DOCKER_STATE: images.json ({tag: {"Id", "Root", "Env", "WorkingDir",
"User"}}) and calls.jsonl, one line per command or API request: for `run`, its options, the
environment and mounts the command got, its exit status and the files it left in the container
outside the mounts (what `docker diff` would list, lost at `--rm`).

    python docker.py engine SOCKET     serves the Engine API on a unix socket (DOCKER_HOST)
    python docker.py info | run ...    the commands MLflow runs
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socketserver
import subprocess
import sys
import tempfile
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

API_VERSION = "1.45"
# The `docker run` options MLflow passes (`--rm`, `-v`, `-e`) and those the README has users add
# with `-A` (mlflow/projects/backend/local.py turns `-A name=value` into `--name value`).
VALUE_OPTIONS = {
    "-v": "volume",
    "-e": "env",
    "--network": "network",
    "--gpus": "gpus",
    "--shm-size": "shm-size",
}
FLAGS = {"--rm"}


def state() -> Path:
    """The folder the test gave: images.json in, calls.jsonl and the containers out."""
    return Path(os.environ["FAKE_DOCKER_STATE"])


def record(entry: dict) -> None:
    """Append one command or API request to calls.jsonl, for the test to check."""
    with open(state() / "calls.jsonl", "a") as calls:
        calls.write(json.dumps(entry) + "\n")


def images() -> dict[str, dict]:
    return json.loads((state() / "images.json").read_text())


def find_image(reference: str) -> tuple[str, dict] | None:
    """(tag, image) of a tag or an image id, with or without its `sha256:`."""
    for tag, image in images().items():
        if reference in (tag, image["Id"], image["Id"].removeprefix("sha256:")):
            return tag, image
    return None


# --- The Engine API --------------------------------------------------------------------------


def image_attrs(tag: str, image: dict) -> dict:
    """The fields of the Engine's image JSON that the Docker SDK and MLflow read."""
    config = {"Env": image["Env"], "WorkingDir": image["WorkingDir"], "User": image["User"]}
    return {"Id": image["Id"], "RepoTags": [tag], "RepoDigests": [], "Config": config}


class EngineAPI(http.server.BaseHTTPRequestHandler):
    """The requests MLflow's Docker SDK makes; any other one is answered 404 and recorded, so
    the test sees a pull or a build it did not expect."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.answer()

    do_DELETE = do_PUT = do_POST

    def answer(self) -> None:
        url = urlparse(self.path)
        path = re.sub(r"^/v\d+\.\d+", "", url.path)  # the SDK prefixes its API version
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        status, body = self.route(path, query)
        record({"api": self.command, "path": url.path, "query": query, "status": status})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Api-Version", API_VERSION)
        self.end_headers()
        self.wfile.write(data)

    def route(self, path: str, query: dict[str, str]) -> tuple[int, object]:
        if self.command == "GET" and path == "/version":
            return 200, {
                "ApiVersion": API_VERSION,
                "MinAPIVersion": "1.24",
                "Version": "fake",
                "Os": "linux",
                "Arch": "amd64",
            }
        if self.command == "GET" and path == "/images/json":
            wanted = json.loads(query.get("filters", "{}")).get("reference", [])
            return 200, [
                image_attrs(tag, image)
                for tag, image in images().items()
                if not wanted or any(fnmatch(tag, pattern) for pattern in wanted)
            ]
        found = re.fullmatch(r"/images/(.+)/json", path)
        if self.command == "GET" and found:
            image = find_image(unquote(found[1]))
            if image is None:
                return 404, {"message": f"No such image: {unquote(found[1])}"}
            return 200, image_attrs(*image)
        return 404, {"message": f"page not found: {self.command} {path} (not served here)"}

    def address_string(self) -> str:
        return "engine"

    def log_message(self, format: str, *args) -> None:
        pass


class Engine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def engine(socket: str) -> int:
    """Serve the Engine API on a unix socket until SIGTERM."""
    with Engine(socket, EngineAPI) as server:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server.serve_forever()
    return 0


# --- The command line ------------------------------------------------------------------------


def fail(message: str) -> int:
    """Say what went wrong as docker does, with its exit status for its own errors."""
    print(f"docker: {message}", file=sys.stderr)
    return 125


def parse_run(arguments: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """(options, [image, *command]) of `docker run`'s arguments."""
    options: dict[str, list[str]] = {}
    position = 0
    while position < len(arguments) and arguments[position].startswith("-"):
        argument = arguments[position]
        if argument in FLAGS:
            options.setdefault(argument.lstrip("-"), []).append("true")
        elif argument in VALUE_OPTIONS and position + 1 < len(arguments):
            position += 1
            options.setdefault(VALUE_OPTIONS[argument], []).append(arguments[position])
        else:
            raise ValueError(
                f"unknown flag: {argument} (the stand-in knows {sorted(FLAGS)} and "
                f"{sorted(VALUE_OPTIONS)})"
            )
        position += 1
    return options, arguments[position:]


def inside(container: Path, path: str) -> Path:
    """Where an absolute container path lies in the container's folder."""
    return container / path.lstrip("/")


def to_host(value: str, container: Path) -> str:
    """An image Env value with its absolute container paths (alone or in a PATH-like list) moved
    into the container's folder; paths of the host's own system (/usr, /bin) stay as they are."""
    parts = value.split(os.pathsep)
    if not all(part.startswith("/") for part in parts):
        return value
    return os.pathsep.join(
        str(inside(container, part)) if inside(container, part.split("/")[1]).exists() else part
        for part in parts
    )


def listing(root: Path) -> set[str]:
    """Every path under root, without following symlinks (mounts are symlinks)."""
    found = set()
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            found.add(str(Path(folder, name).relative_to(root)))
    return found


def run(arguments: list[str]) -> int:
    """`docker run [OPTIONS] IMAGE COMMAND`: COMMAND on the host, in a copy of the image."""
    try:
        options, rest = parse_run(arguments)
    except ValueError as error:
        return fail(str(error))
    if not rest:
        return fail("'docker run' requires at least 1 argument")
    reference, command = rest[0], rest[1:]
    found = find_image(reference)
    if found is None:
        return fail(f"Unable to find image '{reference}' locally (the stand-in pulls nothing)")
    tag, image = found
    container = Path(tempfile.mkdtemp(prefix="container-", dir=state()))
    shutil.copytree(image["Root"], container, symlinks=True, dirs_exist_ok=True)
    image_files = listing(container)

    mounts = []
    for volume in options.get("volume", []):
        source, target, *mode = volume.split(":")
        if not source.startswith("/"):
            return fail(f"{volume}: named volumes are not served by the stand-in")
        created = not Path(source).exists()
        Path(source).mkdir(parents=True, exist_ok=True)  # as docker does, owned by its user
        point = inside(container, target)
        if point.is_symlink() or point.is_file():
            point.unlink()
        elif point.is_dir():
            shutil.rmtree(point)
        point.parent.mkdir(parents=True, exist_ok=True)
        point.symlink_to(source, target_is_directory=True)
        mounts.append(
            {
                "source": source,
                "target": target,
                "mode": mode[0] if mode else "rw",
                "created": created,
            }
        )

    env = {}
    for item in image["Env"]:
        name, _, value = item.partition("=")
        env[name] = to_host(value, container)
    passed = {}
    for item in options.get("env", []):
        name, equals, value = item.partition("=")
        if equals:
            passed[name] = value
        elif name in os.environ:  # `-e NAME` copies the caller's value, when it has one
            passed[name] = os.environ[name]
    env.update(passed)
    workdir = inside(container, image["WorkingDir"] or "/")

    try:
        process = subprocess.Popen(command, cwd=workdir, env=env)
    except OSError as error:
        return fail(f"failed to start {command[:1]}: {error}")
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, lambda signum, frame: process.send_signal(signum))
    returncode = process.wait()

    changes = sorted(
        path
        for path in listing(container) - image_files
        if not any(
            path == mount["target"].lstrip("/")
            or path.startswith(mount["target"].lstrip("/") + "/")
            for mount in mounts
        )
    )
    record(
        {
            "cli": "run",
            "arguments": arguments,
            "image": tag,
            "options": {k: v for k, v in options.items() if k not in ("env", "volume")},
            "passed_env": passed,
            "env": env,
            "mounts": mounts,
            "container": str(container),
            "workdir": str(workdir),
            "command": command,
            "returncode": returncode,
            "changes": changes,
        }
    )
    if "rm" in options:
        shutil.rmtree(container, ignore_errors=True)
    return returncode


def main(arguments: list[str]) -> int:
    if not arguments:
        return fail("no command")
    if arguments[0] == "engine":
        return engine(arguments[1])
    if arguments[0] == "run":
        return run(arguments[1:])
    record({"cli": arguments[0], "arguments": arguments[1:]})
    if arguments[0] == "info":
        print("Server:\n Server Version: fake (tests/e2e/fake_docker)")
        return 0
    return fail(f"'{arguments[0]}' is not a docker command the stand-in knows")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
