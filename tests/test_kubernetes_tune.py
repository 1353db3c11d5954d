"""kubernetes/tune_job.yaml: the search as an Indexed Job of `tune` workers, applied with kubectl
(not through MLflow's backend). Its command, with Kubernetes' `$(NAME)` references expanded from
the Secret example, must parse with the pipeline's own `tune` parser; its pods must be
job_template.yaml's (image, user, GPU, volumes, mounts, tracking credentials), read only keys the
Secret defines, and survive the Kubernetes client's V1Job model. No cluster and no network.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath

import pytest
from sqlalchemy.engine import make_url

from pipeline.tracking.runs import DEFAULT_EXPERIMENT
from tests.test_kubernetes import (
    CONFIG,
    K8S_REFERENCE,
    KUBERNETES,
    MLFLOW_VARIABLES,
    PVC,
    SECRET,
    SECRET_LIKE,
    container,
    container_environment,
    load_yaml,
    pod_spec,
    secret_values,
)
from tests.test_launchers import check_pipeline_args, pipeline_invocation

TUNE_JOB = KUBERNETES / "tune_job.yaml"
TEMPLATE = KUBERNETES / "job_template.yaml"
STORAGE_VARIABLE = "OPTUNA_STORAGE"
STORAGE_KEY = "optuna-storage"
PASSWORD_KEY = "optuna-password"  # of the storage's user
# The Secret's variables every tracking client reads, given as job_template.yaml gives them.
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def tune_job() -> dict:
    return load_yaml(TUNE_JOB)


def env_entries(job: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container(job)["env"]}


def expand(word: str, env: dict[str, str]) -> str:
    """A command word as the kubelet expands it: `$(NAME)` from the container's environment,
    `$$` as `$`, an unknown reference left as it is."""

    def substitute(match) -> str:
        return "$" if match[0] == "$$" else env.get(match[1], match[0])

    return K8S_REFERENCE.sub(substitute, word)


def pod_argv(job: dict) -> list[str]:
    """The process the pod starts: command then args, expanded with the Secret example's values."""
    env = container_environment(container(job)["env"], secret_values())
    words = [*container(job)["command"], *container(job).get("args", [])]
    return [expand(word, env) for word in words]


def tune_params(job: dict):
    call = pipeline_invocation(pod_argv(job))
    assert call and call[0] == "tune", f"the pod must run `python -m pipeline tune`: {call}"
    return check_pipeline_args(*call)


def persistent_mounts(job: dict) -> list[str]:
    claims = {
        volume["name"]
        for volume in pod_spec(job)["volumes"]
        if volume.get("persistentVolumeClaim", {}).get("claimName")
        == load_yaml(PVC)["metadata"]["name"]
    }
    return [m["mountPath"] for m in container(job)["volumeMounts"] if m["name"] in claims]


def on_volume(path: str, mounts: list[str]) -> bool:
    return any(PurePosixPath(path).is_relative_to(mount) for mount in mounts)


# --- The Job ----------------------------------------------------------------------------------


def test_tune_job_is_an_indexed_job_of_one_worker_per_index() -> None:
    job = tune_job()
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    # Equal, so that both can be changed together while the Job runs (elastic Indexed Jobs).
    assert spec["parallelism"] == spec["completions"] >= 2
    # Not MLflow's template: `mlflow run` would give every pod the same MLFLOW_RUN_ID.
    assert json.loads(CONFIG.read_text())["kube-job-template-path"] != "kubernetes/tune_job.yaml"
    assert job["metadata"]["namespace"] == load_yaml(TEMPLATE)["metadata"]["namespace"]
    assert job["metadata"]["name"] != load_yaml(TEMPLATE)["metadata"]["name"]


def test_a_failed_tune_pod_is_replaced_and_an_evicted_one_is_free() -> None:
    """A replaced pod joins the study again; the trial its predecessor trained is retried."""
    job = tune_job()
    spec = job["spec"]
    assert spec.get("backoffLimitPerIndex", spec.get("backoffLimit", 0)) >= 1
    assert pod_spec(job)["restartPolicy"] == "Never"
    rules = spec["podFailurePolicy"]["rules"]
    assert rules == load_yaml(TEMPLATE)["spec"]["podFailurePolicy"]["rules"]
    assert pod_spec(job)["enableServiceLinks"] is False


# --- The command ------------------------------------------------------------------------------


def test_pods_run_one_tune_worker_each_on_the_secrets_storage() -> None:
    job = tune_job()
    argv = pod_argv(job)
    assert not any(K8S_REFERENCE.search(word) for word in argv), f"unexpanded: {argv}"
    params = tune_params(job)
    assert params.workers == 1
    (secret,) = secret_values().values()
    assert params.storage == secret[STORAGE_KEY]
    assert params.study_name
    # Every worker has a trial to train at first.
    assert params.n_trials >= job["spec"]["parallelism"]


def test_tune_folders_are_on_the_shared_volume() -> None:
    """The data and the trials' checkpoints on the volume every pod mounts: a replaced pod's
    trial resumes from its checkpoint, whichever pod takes it."""
    job = tune_job()
    params = tune_params(job)
    mounts = persistent_mounts(job)
    for name in ("raw_dir", "processed_dir", "checkpoint_dir"):
        path = getattr(params, name)
        assert PurePosixPath(path).is_absolute() and on_volume(path, mounts), f"{name}={path}"
    assert "workingDir" not in container(job)


# --- The environment --------------------------------------------------------------------------


def test_storage_comes_from_the_secret_examples_key() -> None:
    entry = env_entries(tune_job())[STORAGE_VARIABLE]
    reference = entry["valueFrom"]["secretKeyRef"]
    secret = load_yaml(SECRET)
    assert reference["name"] == secret["metadata"]["name"]
    assert reference["key"] == STORAGE_KEY and STORAGE_KEY in secret["stringData"]
    assert not reference.get("optional"), "without a storage the workers would not share a study"


def test_secret_examples_storage_is_a_url_the_pipeline_takes() -> None:
    """A database URL every worker can share, with no password in it: that comes from its own
    key, as PGPASSWORD, which libpq reads."""
    secret = load_yaml(SECRET)["stringData"]
    storage = secret[STORAGE_KEY]
    params = check_pipeline_args("tune", ["--storage", storage])
    assert params.storage == storage
    url = make_url(storage)
    assert url.get_backend_name() == "postgresql"
    assert url.password is None
    reference = env_entries(tune_job())["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
    assert reference["key"] == PASSWORD_KEY and secret[PASSWORD_KEY] == ""


def test_every_secret_reference_is_a_key_the_secret_defines() -> None:
    secret = load_yaml(SECRET)
    for name, entry in env_entries(tune_job()).items():
        secret_like = SECRET_LIKE.search(name) or "TRACKING_URI" in name or "STORAGE" in name
        if secret_like:
            assert "secretKeyRef" in entry.get("valueFrom", {}), f"{name} is not from the Secret"
        if "valueFrom" in entry:
            reference = entry["valueFrom"]["secretKeyRef"]
            assert reference["name"] == secret["metadata"]["name"], name
            assert reference["key"] in secret["stringData"], name


def test_pods_track_into_the_secrets_server_in_the_pipelines_experiment() -> None:
    """MLflow fills nothing in: the tracking URI is the Secret's, each pod opens its own run
    (no MLFLOW_RUN_ID), in the experiment the pipeline uses; the credentials are the template's."""
    job = tune_job()
    names = [entry["name"] for entry in container(job)["env"]]
    assert len(names) == len(set(names))
    assert not set(names) & (set(MLFLOW_VARIABLES) - {"MLFLOW_TRACKING_URI"})
    (secret,) = secret_values().values()
    env = container_environment(container(job)["env"], secret_values())
    assert env["MLFLOW_TRACKING_URI"] == secret["tracking-uri"]
    assert env["MLFLOW_EXPERIMENT_NAME"] == DEFAULT_EXPERIMENT
    template = env_entries(load_yaml(TEMPLATE))
    for name in CREDENTIALS:
        assert env_entries(job)[name] == template[name]
    # The template's settings (not its tracking entries, which MLflow's backend shapes) too.
    for name, entry in template.items():
        if "valueFrom" not in entry:
            assert env_entries(job).get(name) == entry, name


# --- The pods: job_template.yaml's ------------------------------------------------------------


@pytest.mark.parametrize(
    "part",
    [
        lambda job: container(job)["image"],
        lambda job: container(job)["securityContext"],
        lambda job: container(job)["resources"],
        lambda job: container(job)["volumeMounts"],
        lambda job: pod_spec(job)["securityContext"],
        lambda job: pod_spec(job)["tolerations"],
        lambda job: pod_spec(job)["volumes"],
    ],
    ids=[
        "image",
        "container-securityContext",
        "resources",
        "volumeMounts",
        "pod-securityContext",
        "tolerations",
        "volumes",
    ],
)
def test_tune_pods_are_the_templates_pods(part) -> None:
    assert part(tune_job()) == part(load_yaml(TEMPLATE))


def test_each_tune_pod_asks_for_one_gpu() -> None:
    assert container(tune_job())["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_tune_job_matches_the_kubernetes_api_schema() -> None:
    """Every field is one the API knows (backoffLimitPerIndex, completionMode included): the Job
    survives a round trip through the official client's V1Job model unchanged."""
    pytest.importorskip("kubernetes.client", reason="the kubernetes client is not installed")
    from kubernetes.client import ApiClient

    api = ApiClient()
    manifest = tune_job()
    parsed = api._ApiClient__deserialize(json.loads(json.dumps(manifest)), "V1Job")
    assert api.sanitize_for_serialization(parsed) == manifest
