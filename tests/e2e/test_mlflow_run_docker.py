"""`mlflow run . -e main`, the way users start the pipeline in its container, end to end.

The real `mlflow` command line runs the project: it creates the run on the host (against a
tracking server, as the README has users do), asks Docker for the MLproject's image, and starts
`docker run` with the MLproject's volumes and environment. No Docker engine runs here, so
`docker` is a stand-in (tests/e2e/fake_docker/docker.py): it answers the Engine API calls MLflow
makes on DOCKER_HOST and runs `docker run`'s command on the host as the container would see it,
in a copy of the trainer image made from docker/Dockerfile (its WORKDIR with what it COPYs, its
ENV, HOME), with only the `-e` environment and each `-v` mount a link to its host folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.projects import _project_spec
from mlflow.tracking import MlflowClient

from pipeline.params import as_text
from pipeline.training.recipes import RECIPES
from tests.conftest import free_port
from tests.stack.container_files import expand, parse_dockerfile

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
FAKE_DOCKER = Path(__file__).resolve().parent / "fake_docker" / "docker.py"
BIN = Path(sys.executable).parent
# PATH in the nvidia/cuda base image, which the Dockerfile's ENV PATH extends.
BASE_PATH = (
    "/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
    ":/sbin:/bin"
)
SETTINGS = {
    "source": "synthetic:24",
    "image_size": "32",
    "base_channels": "4",
    "depth": "1",
    "max_epochs": "2",
    "batch_size": "8",
    "num_workers": "0",
    "min_dice": "0",  # two epochs of a tiny net: let its model take the free alias
}
STEPS = {"download", "preprocess", "train", "evaluate", "promote"}


# --- The trainer image, made from docker/Dockerfile -------------------------------------------


def build_trainer_image(root: Path) -> dict:
    """What the stand-in needs of the image docker/Dockerfile builds, laid out in `root`: the
    files its COPY lines put in its WORKDIR, the folders its RUN makes there, HOME, and its venv
    at VIRTUAL_ENV, which is this test's environment (torch and the project's dependencies)."""
    args, env, workdir = {}, {"PATH": BASE_PATH}, "/"
    for instruction in parse_dockerfile(DOCKERFILE.read_text()):
        keyword, arguments = instruction.keyword, instruction.arguments
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            args[name] = default
        elif keyword == "ENV":
            for word in shlex.split(arguments):
                name, _, value = word.partition("=")
                env[name] = expand(value, env)
        elif keyword == "WORKDIR":
            workdir = str(Path(workdir, expand(arguments, env)))
        elif keyword == "COPY":
            *sources, destination = [word for word in arguments.split() if word[:2] != "--"]
            base = root if destination.startswith("/") else root / workdir.lstrip("/")
            target = base / destination.lstrip("/")
            for source in sources:
                if (ROOT / source).is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.py[cod]")
                    shutil.copytree(ROOT / source, target, ignore=ignore, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / source, target / Path(source).name)
        elif keyword == "USER":
            user = expand(arguments, args)
    for folder in (f"{workdir}/data/cache", f"{workdir}/checkpoints", env["HOME"]):
        (root / folder.lstrip("/")).mkdir(parents=True, exist_ok=True)
    venv = root / env["VIRTUAL_ENV"].lstrip("/")
    venv.parent.mkdir(parents=True, exist_ok=True)
    venv.symlink_to(sys.prefix, target_is_directory=True)
    return {
        "Id": "sha256:" + hashlib.sha256(DOCKERFILE.read_bytes()).hexdigest(),
        "Root": str(root),
        "Env": [f"{name}={value}" for name, value in env.items()],
        "WorkingDir": workdir,
        "User": user,
    }


# --- The engine stand-in and a tracking server --------------------------------------------


def wait_for(
    ready: Callable[[], bool], what: str, process: subprocess.Popen, log: Path, timeout: float = 120
) -> None:
    """Until ready() holds; fails with the log's end when the process dies first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"{what} exited: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} not ready in {timeout} s"
        time.sleep(0.2)


@contextmanager
def docker_engine(state: Path) -> Iterator[str]:
    """The stand-in's Engine API on a unix socket: the DOCKER_HOST to give MLflow."""
    folder = Path(tempfile.mkdtemp(prefix="docker-"))  # short: a socket path has <= 107 bytes
    socket, log = folder / "docker.sock", state / "engine.log"
    process = subprocess.Popen(
        [sys.executable, str(FAKE_DOCKER), "engine", str(socket)],
        env={**os.environ, "FAKE_DOCKER_STATE": str(state)},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(socket.exists, "the engine stand-in", process, log, timeout=30)
        yield f"unix://{socket}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def healthy(uri: str) -> bool:
    """The tracking server answers /health."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def tracking_server(folder: Path) -> Iterator[str]:
    """`mlflow server` on a fresh SQLite store, serving artifacts itself (as the stack's does)."""
    folder.mkdir()
    uri, log = f"http://127.0.0.1:{free_port()}", folder / "server.log"
    process = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            *("--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"),
            *("--artifacts-destination", (folder / "artifacts").as_uri()),
            *("--host", "127.0.0.1", "--port", uri.rsplit(":", 1)[1], "--workers", "1"),
        ],
        cwd=folder,
        # Without MLflow's GenAI job runner, as docker/mlflow-server.sh starts the stack's.
        env={
            "PATH": f"{BIN}:/usr/bin:/bin",
            "HOME": str(folder),
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: healthy(uri), "mlflow server", process, log)
        yield uri
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with tracking_server(tmp_path_factory.mktemp("tracking") / "server") as uri:
        yield uri


def calls(state: Path) -> list[dict]:
    """What the stand-in was asked, in order: commands ("cli") and API requests ("api")."""
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


# --- The test ------------------------------------------------------------------------------

# Every other parameter of main whose MLproject default is empty, given a value. `mlflow run`
# logs each parameter as its shell quoting, so an empty one as '' (MLflow's
# EntryPoint.compute_parameters), and the step refuses that logged text today: the
# README-defaults case below. Each recipe setting not set above gets the default recipe's own
# value, spelled out, so a setting declared tomorrow is given one here too.
EVERY_SETTING = {
    **{
        name: value
        for name, value in as_text(RECIPES["default"].settings()).items()
        if name not in SETTINGS
    },
    "optimizer": "adamw",
    "augment": "none",
    "patience": "5",
    "max_time": "00:00:10:00",
    "onnx": "false",
}


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("every setting", id="every-setting-given"),
        # Only the tiny settings, the rest the MLproject's defaults, as the README's command:
        # `mlflow run` logs the empty ones as `''`, its shell quoting.
        pytest.param("readme defaults", id="readme-defaults"),
    ],
)
def test_mlflow_run_main_runs_in_the_trainer_container_and_logs_into_the_run_it_made(
    tmp_path: Path, tracking_uri: str, given: str
) -> None:
    experiment_name = f"unet-person-in-docker-{given.replace(' ', '-')}"
    spec = _project_spec.load_project(str(ROOT))
    params = {**SETTINGS, **(EVERY_SETTING if given == "every setting" else {})}
    if given == "every setting":
        empty = {n for n, p in spec.get_entry_point("main").parameters.items() if p.default == ""}
        assert empty <= set(params), f"give {sorted(empty - set(params))} a value in EVERY_SETTING"
    image_name = spec.docker_env["image"]
    state = tmp_path / "docker"
    state.mkdir()
    (state / "calls.jsonl").touch()
    image = build_trainer_image(tmp_path / "image")
    (state / "images.json").write_text(json.dumps({image_name: image}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_DOCKER}" "$@"\n')
    (bin_dir / "docker").chmod(0o755)

    # The project folder as the README has users prepare it: data/, checkpoints/ and ~/.mlflow
    # made first. Only the MLproject is needed on the host: the code that runs is the image's.
    project, home = tmp_path / "project", tmp_path / "home"
    project.mkdir()
    shutil.copy2(ROOT / "MLproject", project)
    for folder in (project / "data", project / "checkpoints"):
        folder.mkdir()
    (home / ".mlflow").mkdir(mode=0o700, parents=True)

    with docker_engine(state) as docker_host:
        host = {
            "PATH": f"{bin_dir}:{BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "DOCKER_HOST": docker_host,
            "FAKE_DOCKER_STATE": str(state),
            "MLFLOW_TRACKING_URI": tracking_uri,
            "UNET_PERSON_MAX_PIXELS": "12345678",  # the MLproject passes it on
            "ONLY_ON_THE_HOST": "not passed",
        }
        # As the README has users start it (less the GPU), with tiny settings.
        command = [
            str(BIN / "mlflow"),
            *("run", ".", "-e", "main", "--experiment-name", experiment_name),
            *("-A", "network=host"),
            *[word for name, value in params.items() for word in ("-P", f"{name}={value}")],
        ]
        result = subprocess.run(
            command, cwd=project, env=host, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
        client = MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        runs = client.search_runs([experiment.experiment_id])

    made = calls(state)
    assert [call["cli"] for call in made if "cli" in call] == ["info", "run"]  # main: no docker
    (docker_run,) = [call for call in made if call.get("cli") == "run"]
    api = [(call["api"], call["path"], call["status"]) for call in made if "api" in call]
    assert api and all(status == 200 for _, _, status in api), api  # nothing pulled or built

    # The run MLflow made on the host is the one the step in the container logged into.
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    run_id = parent.info.run_id
    passed = docker_run["passed_env"]
    assert passed["MLFLOW_RUN_ID"] == run_id
    assert parent.data.tags["mlflow.project.env"] == "docker"
    assert parent.data.tags["mlflow.project.entryPoint"] == "main"
    assert parent.data.tags["mlflow.docker.image.uri"] == image_name
    assert parent.data.tags["mlflow.docker.image.id"] == image["Id"]
    assert parent.info.status == "FINISHED"
    assert {name: parent.data.params[name] for name in params} == params
    assert "test_dice" in parent.data.metrics
    steps = {run.data.tags["mlflow.project.entryPoint"]: run for run in runs if run is not parent}
    assert set(steps) == STEPS
    for step in steps.values():
        assert step.data.tags["mlflow.parentRunId"] == run_id
        assert step.info.status == "FINISHED"
    assert "best_val_dice" in steps["train"].data.metrics
    assert "test_dice" in steps["evaluate"].data.metrics

    # -e: what MLflow passes, and the MLproject's settings, arrived; nothing else of the host.
    assert passed["MLFLOW_TRACKING_URI"] == tracking_uri
    assert passed["MLFLOW_EXPERIMENT_ID"] == experiment.experiment_id
    assert passed["UNET_PERSON_MAX_PIXELS"] == "12345678"
    env = docker_run["env"]
    image_env = {item.partition("=")[0] for item in image["Env"]}
    assert set(env) == image_env | set(passed)
    assert "ONLY_ON_THE_HOST" not in env and "DOCKER_HOST" not in env
    assert docker_run["options"]["network"] == ["host"]

    # -v: the MLproject's volumes, from the folder `mlflow run` ran in and the user's home.
    workdir = image["WorkingDir"]
    mounts = {(m["source"], m["target"], m["mode"]) for m in docker_run["mounts"]}
    assert mounts == {
        (str(project / "data"), f"{workdir}/data", "rw"),
        (str(project / "checkpoints"), f"{workdir}/checkpoints", "rw"),
        (str(home / ".mlflow"), "/home/trainer/.mlflow", "ro"),
    }
    assert not any(mount["created"] for mount in docker_run["mounts"])
    assert docker_run["workdir"] == str(Path(docker_run["container"], workdir.lstrip("/")))
    assert env["HOME"] == str(Path(docker_run["container"], "home/trainer"))
    # What the steps wrote at their relative paths is in the host's folders...
    assert (project / "data" / "raw" / "df.csv").is_file()
    assert list((project / "data" / "processed").iterdir())
    assert (project / "checkpoints" / steps["train"].info.run_id).is_dir()
    assert sorted(path.name for path in project.iterdir()) == ["MLproject", "checkpoints", "data"]
    # ... and nothing of the runs stayed in the container, which --rm deletes: no local tracking
    # store (MLFLOW_TRACKING_URI arrived), no data or checkpoints outside the mounts.
    # Only the caches of HOME (matplotlib's, MLflow's settings) are left there.
    changes = docker_run["changes"]
    assert not [path for path in changes if "mlflow.db" in path or "mlruns" in path], changes
    assert all(path.startswith("home/trainer/") for path in changes), changes
