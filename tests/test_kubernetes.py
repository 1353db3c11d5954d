"""kubernetes/: the Job that `mlflow run --backend kubernetes` would submit, rendered by MLflow's
own functions from our config and template, and checked against the MLproject's docker_env and
compose's trainer: the same image, mounts, shared memory and environment, with the secrets from
the Secret. No cluster and no network: MLflow's code is called up to the point where it would
push the image and create the Job.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import sys
import types
from pathlib import Path
from unittest import mock

import mlflow
import pytest
import yaml
from mlflow.projects import _parse_kubernetes_config, _project_spec
from mlflow.projects.docker import _get_docker_image_uri, validate_docker_env
from mlflow.projects.utils import (
    MLFLOW_DOCKER_WORKDIR_PATH,
    get_entry_point_command,
    get_run_env_vars,
)

from pipeline import params as pipeline_params
from pipeline import training_params

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "kubernetes"
CONFIG = KUBERNETES / "kubernetes_config.json"
SECRET = KUBERNETES / "secret.example.yaml"
PVC = KUBERNETES / "pvc.yaml"
DOCS = ROOT / "docs" / "scale-out.md"
DOCKERFILE = ROOT / "docker" / "Dockerfile"

HOST_TRACKING_URI = "http://localhost:5000"  # as `mlflow run`'s machine reaches the server
RUN_ID = "0123456789abcdef0123456789abcdef"
EXPERIMENT_ID = "7"
DIGEST = "sha256:" + "ab" * 32
# What MLflow appends to the container's env (mlflow/projects/utils.py, get_run_env_vars).
MLFLOW_VARIABLES = ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SECRET_LIKE = re.compile(r"PASSWORD|USERNAME|SECRET|TOKEN|ACCESS_KEY")
CREDENTIALS_FOLDER = "/home/trainer/.mlflow"  # the docker_env mount that the Secret replaces


def mlflow_kubernetes() -> types.ModuleType:
    """mlflow.projects.kubernetes, which imports the `kubernetes` client at its top although
    MLflow does not require it. The functions used here never call it, so a stand-in serves
    where it is not installed; with it installed, the real module is used. (Without it, `import
    kubernetes` from the repository root finds our kubernetes/ folder as a namespace package.)"""
    try:
        import kubernetes.config.config_exception  # noqa: F401
    except ImportError:
        client = types.ModuleType("kubernetes")
        config = types.ModuleType("kubernetes.config")
        errors = types.ModuleType("kubernetes.config.config_exception")
        errors.ConfigException = type("ConfigException", (Exception,), {})
        client.config = config
        stand_ins = {
            "kubernetes": client,
            "kubernetes.config": config,
            "kubernetes.config.config_exception": errors,
        }
        with mock.patch.dict(sys.modules, stand_ins):
            sys.modules.pop("mlflow.projects.kubernetes", None)
            return importlib.import_module("mlflow.projects.kubernetes")
    return importlib.import_module("mlflow.projects.kubernetes")


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def project() -> _project_spec.Project:
    return _project_spec.load_project(str(ROOT))


def backend_inputs(
    monkeypatch: pytest.MonkeyPatch,
    entry_point: str = "main",
    parameters: dict[str, str] | None = None,
    kube_tracking_uri: str | None = None,
) -> dict:
    """What MLflow hands run_kubernetes_job for `mlflow run . -e <entry_point> --backend
    kubernetes --backend-config kubernetes/kubernetes_config.json` in the repository root: the
    same calls as mlflow/projects/__init__.py's kubernetes branch, with a digest standing in for
    the image's build and push."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", HOST_TRACKING_URI)
    if kube_tracking_uri is None:
        monkeypatch.delenv("KUBE_MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("KUBE_MLFLOW_TRACKING_URI", kube_tracking_uri)
    spec = project()
    validate_docker_env(spec)
    kube_config = _parse_kubernetes_config(json.loads(CONFIG.read_text()))
    tests_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(HOST_TRACKING_URI)  # what `mlflow run` on the host tracks into
    try:
        env_vars = get_run_env_vars(run_id=RUN_ID, experiment_id=EXPERIMENT_ID)
    finally:
        mlflow.set_tracking_uri(tests_uri)
    return {
        "project_name": spec.name,
        "image_tag": _get_docker_image_uri(kube_config["repository-uri"], str(ROOT)),
        "image_digest": DIGEST,
        "command": get_entry_point_command(spec, entry_point, parameters or {}, None),
        "env_vars": env_vars,
        "job_template": kube_config["kube-job-template"],
    }


def render(
    monkeypatch: pytest.MonkeyPatch,
    entry_point: str = "main",
    parameters: dict[str, str] | None = None,
    kube_tracking_uri: str | None = None,
) -> dict:
    """The Job as run_kubernetes_job builds it before it submits it."""
    kubernetes_backend = mlflow_kubernetes()
    inputs = backend_inputs(monkeypatch, entry_point, parameters, kube_tracking_uri)
    inputs["command"] = kubernetes_backend._get_run_command(inputs["command"])
    return kubernetes_backend._get_kubernetes_job_definition(**inputs)


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


def container(job: dict) -> dict:
    (only,) = pod_spec(job)["containers"]
    return only


def secret_values() -> dict[str, dict[str, str]]:
    secret = load_yaml(SECRET)
    return {secret["metadata"]["name"]: dict(secret["stringData"])}


K8S_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def container_environment(env: list[dict], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """The environment a container starts with, built as the kubelet builds it: entries in
    order, a later entry replacing an earlier one of the same name, `$(NAME)` in a value replaced
    by a variable defined before it (`$$` is a `$`; an unknown reference stays as it is), and an
    optional secret key that is missing leaving its variable out."""
    values: dict[str, str] = {}
    for entry in env:
        name = entry["name"]
        if "valueFrom" in entry:
            reference = entry["valueFrom"]["secretKeyRef"]
            secret = secrets[reference["name"]]
            if reference["key"] in secret:
                values[name] = secret[reference["key"]]
            else:
                assert reference.get("optional"), f"{name}: no key {reference['key']!r}"
            continue

        def substitute(match: re.Match) -> str:
            return "$" if match[0] == "$$" else values.get(match[1], match[0])

        values[name] = K8S_REFERENCE.sub(substitute, entry.get("value", ""))
    return values


def documented_kube_tracking_uri() -> str:
    """The KUBE_MLFLOW_TRACKING_URI that docs/scale-out.md tells users to export."""
    match = re.search(r"^export KUBE_MLFLOW_TRACKING_URI=(\S+)", DOCS.read_text(), re.MULTILINE)
    assert match, "docs/scale-out.md: no `export KUBE_MLFLOW_TRACKING_URI=...` line"
    (value,) = shlex.split(match[1])
    return value


def compose_trainer() -> dict:
    return load_yaml(ROOT / "compose.yaml")["services"]["trainer"]


def compose_default(text: str) -> str:
    """The value compose gives `${NAME:-default}` when NAME is unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", str(text))


def docker_env_volume_targets() -> dict[str, str]:
    """Container path -> host path of each MLproject docker_env volume (`"host":path[:ro]`)."""
    targets = {}
    for volume in project().docker_env["volumes"]:
        host, _, rest = volume.rpartition('":')
        targets[rest.split(":")[0]] = host.strip('"')
    return targets


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, f"docker/Dockerfile: no ARG {name}=..."
    return match[1]


def workdir() -> str:
    (path,) = re.findall(r"^WORKDIR (\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    return path


def byte_size(text: str) -> int:
    """Docker's sizes (`8gb`, `512m`: binary units) and Kubernetes quantities (`8Gi`)."""
    match = re.fullmatch(r"(\d+)\s*([kmgt]?)(i?b?)", text.strip().lower())
    assert match, f"not a size: {text!r}"
    return int(match[1]) * 1024 ** " kmgt".index(match[2] or " ")


# --- The backend config: what MLflow's loader reads -------------------------------------------


def test_config_has_the_keys_mlflows_loader_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    config = json.loads(CONFIG.read_text())
    assert set(config) == {"kube-context", "kube-job-template-path", "repository-uri"}
    template_path = Path(config["kube-job-template-path"])
    # MLflow opens the path as given, relative to the folder `mlflow run` runs in: the root.
    assert not template_path.is_absolute()
    assert (ROOT / template_path).is_file()
    monkeypatch.chdir(ROOT)
    loaded = _parse_kubernetes_config(config)
    assert loaded["kube-job-template"] == load_yaml(ROOT / template_path)


def test_repository_uri_names_the_trainer_image_without_a_tag() -> None:
    """MLflow tags the image it builds <repository-uri>:<git commit>: the URI must carry no tag
    or digest of its own, and names the MLproject's image."""
    repository = json.loads(CONFIG.read_text())["repository-uri"]
    image_name = project().docker_env["image"].split(":")[0]
    assert "@" not in repository and ":" not in repository.rsplit("/", 1)[-1]
    assert repository.rsplit("/", 1)[-1] == image_name


# --- The image --------------------------------------------------------------------------------


def test_image_is_the_mlproject_and_compose_trainer_image(monkeypatch: pytest.MonkeyPatch) -> None:
    docker_env_image = project().docker_env["image"]
    assert compose_trainer()["image"] == docker_env_image
    template = load_yaml(ROOT / json.loads(CONFIG.read_text())["kube-job-template-path"])
    assert container(template)["image"] == docker_env_image  # the placeholder MLflow replaces
    repository = json.loads(CONFIG.read_text())["repository-uri"]
    image = container(render(monkeypatch))["image"]
    assert re.fullmatch(rf"{re.escape(repository)}(:[0-9a-f]{{7}})?@{DIGEST}", image), image


def test_job_and_container_names_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    job = render(monkeypatch)
    name = job["metadata"]["name"]
    assert name.startswith(f"{project().name}-")
    # Pods carry the Job's name as a label value: 63 characters at most.
    assert DNS_LABEL.match(name) and len(name) <= 63, name
    assert container(job)["name"] == project().name
    assert DNS_LABEL.match(project().name)
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"


def test_the_secret_and_the_volume_live_in_the_jobs_namespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    namespace = render(monkeypatch)["metadata"]["namespace"]  # MLflow reads it; it has no default
    assert namespace
    assert load_yaml(SECRET)["metadata"]["namespace"] == namespace
    assert load_yaml(PVC)["metadata"]["namespace"] == namespace


# --- The command ------------------------------------------------------------------------------


def test_command_is_the_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    for entry_point in ("main", "train"):
        command = container(render(monkeypatch, entry_point))["command"]
        assert command[:4] == ["python", "-m", "pipeline", entry_point]


@pytest.mark.parametrize("entry_point", ["main", "train"])
def test_parameters_reach_the_pipeline_as_on_a_shell(
    monkeypatch: pytest.MonkeyPatch, entry_point: str
) -> None:
    """The pod's argv must mean what the same command means to the shell `mlflow run` uses with
    docker: defaults left empty included, and a value with a space."""
    folder = {"main": "raw_dir", "train": "data_dir"}[entry_point]
    chosen = {"max_epochs": "3", "max_time": "00:01:00:00", folder: "my data/set"}
    command = container(render(monkeypatch, entry_point, chosen))["command"]
    (shell_command,) = get_entry_point_command(project(), entry_point, chosen, None)
    params_class = getattr(training_params, f"{entry_point.capitalize()}Params")
    on_a_shell = pipeline_params.parse(params_class, shlex.split(shell_command)[4:])
    assert pipeline_params.parse(params_class, command[4:]) == on_a_shell


# --- The environment --------------------------------------------------------------------------


def test_template_leaves_mlflows_variables_to_mlflow() -> None:
    """MLflow appends its own entries; one of the same name in the template would be hidden
    (Kubernetes keeps the last) and warned about."""
    template = load_yaml(ROOT / json.loads(CONFIG.read_text())["kube-job-template-path"])
    names = [entry["name"] for entry in container(template)["env"]]
    assert len(names) == len(set(names))
    assert not set(names) & {*MLFLOW_VARIABLES, "MLFLOW_EXPERIMENT_NAME"}


def test_pods_track_into_the_secrets_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """With KUBE_MLFLOW_TRACKING_URI as the docs say, the URI MLflow appends expands to the
    Secret's tracking-uri; without it, pods get the host's own URI."""
    secrets = secret_values()
    (secret,) = secrets.values()
    job = render(monkeypatch, kube_tracking_uri=documented_kube_tracking_uri())
    env = container_environment(container(job)["env"], secrets)
    assert env["MLFLOW_TRACKING_URI"] == secret["tracking-uri"]
    assert env["MLFLOW_RUN_ID"] == RUN_ID and env["MLFLOW_EXPERIMENT_ID"] == EXPERIMENT_ID
    plain = container_environment(container(render(monkeypatch))["env"], secrets)
    assert plain["MLFLOW_TRACKING_URI"] == HOST_TRACKING_URI


def test_pods_get_every_variable_composes_trainer_gets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of compose's trainer variables reaches the pod: credentials from the Secret, never
    as values in the template; the experiment as the ID MLflow passes (its name beside the ID
    makes MLflow stop the run, see the MLproject)."""
    job = render(monkeypatch, kube_tracking_uri=documented_kube_tracking_uri())
    entries = {entry["name"]: entry for entry in container(job)["env"]}
    resolved = container_environment(container(job)["env"], secret_values())
    for name in compose_trainer()["environment"]:
        if name == "MLFLOW_EXPERIMENT_NAME":
            assert "MLFLOW_EXPERIMENT_ID" in resolved and name not in entries
        elif name == "MLFLOW_TRACKING_URI":
            assert resolved[name] == next(iter(secret_values().values()))["tracking-uri"]
        else:
            assert name in entries, f"compose gives the trainer {name}; the Job does not"
            if SECRET_LIKE.search(name):
                assert "secretKeyRef" in entries[name].get("valueFrom", {}), name


def test_secret_like_variables_come_from_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    template = load_yaml(ROOT / json.loads(CONFIG.read_text())["kube-job-template-path"])
    secret = load_yaml(SECRET)
    for entry in container(template)["env"]:
        if SECRET_LIKE.search(entry["name"]) or "TRACKING_URI" in entry["name"]:
            reference = entry["valueFrom"]["secretKeyRef"]
            assert reference["name"] == secret["metadata"]["name"]
            assert reference["key"] in secret["stringData"]
    # The example holds no credentials (the storage URL's placeholder: test_kubernetes_tune.py).
    addresses = {"tracking-uri", "optuna-storage"}
    assert not any(value for key, value in secret["stringData"].items() if key not in addresses)


def test_docker_env_settings_are_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The MLproject's docker_env `environment`, which MLflow applies only when it runs docker."""
    names = {entry["name"] for entry in container(render(monkeypatch))["env"]}
    for variable in project().docker_env.get("environment", []):
        assert (variable[0] if isinstance(variable, list) else variable) in names


# --- Volumes, shared memory, GPUs -------------------------------------------------------------


def test_volumes_are_mounted_where_docker_env_mounts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """data/ and checkpoints/ on the persistent volume, at the MLproject's (and compose's) paths;
    the host's ~/.mlflow (the server's credentials) is replaced by the Secret's variables."""
    job = render(monkeypatch)
    mounts = {mount["mountPath"]: mount for mount in container(job)["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec(job)["volumes"]}
    claim = load_yaml(PVC)["metadata"]["name"]
    env = {entry["name"]: entry for entry in container(job)["env"]}
    for target in docker_env_volume_targets():
        if target == CREDENTIALS_FOLDER:
            for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                assert "secretKeyRef" in env[name]["valueFrom"]
            continue
        assert target in mounts, f"docker_env mounts {target}; the Job does not"
        volume = volumes[mounts[target]["name"]]
        assert volume["persistentVolumeClaim"]["claimName"] == claim
        assert not mounts[target].get("readOnly")
    compose_targets = {volume.split(":")[1] for volume in compose_trainer()["volumes"]}
    assert compose_targets <= set(mounts)
    subpaths = [mounts[target].get("subPath") for target in compose_targets]
    assert len(set(subpaths)) == len(subpaths), "data and checkpoints share one folder"


def test_default_folders_land_on_the_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry points' default data_dir and checkpoint_dir are relative to the image's WORKDIR
    (where MLflow's --build-image copies the code too), so they must resolve into the mounts:
    a replaced pod finds checkpoints/<run id>/last.ckpt there and resumes."""
    job = render(monkeypatch)
    assert "workingDir" not in container(job)
    assert workdir() == MLFLOW_DOCKER_WORKDIR_PATH.rstrip("/")
    persistent = [
        mount["mountPath"]
        for mount in container(job)["volumeMounts"]
        if "persistentVolumeClaim"
        in next(v for v in pod_spec(job)["volumes"] if v["name"] == mount["name"])
    ]
    train = project().get_entry_point("train").parameters
    for name in ("data_dir", "checkpoint_dir"):
        path = f"{workdir()}/{train[name].default}"
        assert any(path == root or path.startswith(root + "/") for root in persistent), path


def test_shared_memory_is_in_memory_and_as_large_as_composes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = render(monkeypatch)
    (mount,) = [m for m in container(job)["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    (volume,) = [v for v in pod_spec(job)["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"
    size = byte_size(volume["emptyDir"]["sizeLimit"])
    assert size == byte_size(compose_default(compose_trainer()["shm_size"]))
    # A memory-backed emptyDir counts as the container's memory.
    assert byte_size(container(job)["resources"]["limits"]["memory"]) > size


def test_pod_asks_for_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = container(render(monkeypatch))["resources"]["limits"]["nvidia.com/gpu"]
    # A quantity is a string in the API's schema (the client's models refuse a bare number).
    assert isinstance(gpus, str) and int(gpus) >= 1


def test_pod_runs_as_the_images_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's default user (docker/Dockerfile's UID/GID, compose's TRAINER_UID/GID): its
    HOME and the volume's files must be its own."""
    security = pod_spec(render(monkeypatch))["securityContext"]
    build_args = compose_trainer()["build"]["args"]
    assert str(security["runAsUser"]) == dockerfile_arg("UID") == compose_default(build_args["UID"])
    assert str(security["fsGroup"]) == dockerfile_arg("GID") == compose_default(build_args["GID"])


def test_a_failed_pod_is_replaced_and_an_evicted_one_is_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = render(monkeypatch)
    assert job["spec"]["backoffLimit"] >= 1
    # podFailurePolicy requires Never: the Job, not the kubelet, replaces a failed pod.
    assert pod_spec(job)["restartPolicy"] == "Never"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
    # No MLFLOW_* variables from a Service named mlflow in the namespace.
    assert pod_spec(job)["enableServiceLinks"] is False


def test_manifests_match_the_kubernetes_api_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every field is one the API knows: the manifests survive a round trip through the
    official client's models unchanged (a misspelt field would be dropped)."""
    pytest.importorskip("kubernetes.client", reason="the kubernetes client is not installed")
    from kubernetes.client import ApiClient

    api = ApiClient()
    for manifest, model in (
        (render(monkeypatch), "V1Job"),
        (load_yaml(SECRET), "V1Secret"),
        (load_yaml(PVC), "V1PersistentVolumeClaim"),
    ):
        # The deserializer behind ApiClient.deserialize, whose signature changed in client 35.
        parsed = api._ApiClient__deserialize(json.loads(json.dumps(manifest)), model)
        assert api.sanitize_for_serialization(parsed) == manifest


def test_mlflow_submits_the_job_through_the_kubernetes_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLflow's own submission (run_kubernetes_job) with the installed client, stopped at the
    HTTP request: the Job goes to its namespace as rendered. kubernetes 37 refuses MLflow 3.17's
    call (`pretty=True` where its validated API wants a string): docs/scale-out.md pins < 37."""
    pytest.importorskip("kubernetes.client", reason="the kubernetes client is not installed")
    import kubernetes.config as kube_config
    from kubernetes.client import rest

    kubernetes_backend = mlflow_kubernetes()
    job = render(monkeypatch)
    sent: dict = {}

    def capture(self, method: str, url: str, *args, **kwargs):
        sent.update(method=method, url=url, body=kwargs.get("body"))
        raise ConnectionAbortedError("request captured, not sent")

    monkeypatch.setattr(kube_config, "load_kube_config", lambda **kwargs: None)
    monkeypatch.setattr(rest.RESTClientObject, "request", capture)
    inputs = backend_inputs(monkeypatch)
    with pytest.raises(ConnectionAbortedError):
        kubernetes_backend.run_kubernetes_job(
            inputs["project_name"],
            types.SimpleNamespace(info=types.SimpleNamespace(run_id=RUN_ID)),
            inputs["image_tag"],
            inputs["image_digest"],
            inputs["command"],
            inputs["env_vars"],
            None,
            inputs["job_template"],
        )
    namespace = job["metadata"]["namespace"]
    assert sent["method"] == "POST"
    assert sent["url"].endswith(f"/apis/batch/v1/namespaces/{namespace}/jobs")
    assert sent["body"]["spec"] == job["spec"]
