"""Launch lines for several GPUs and nodes: every command of docs/scale-out.md and the `srun`
lines of slurm/train.sbatch and slurm/tune.sbatch, checked against the pipeline's own
parameters, torchrun's own argument parser and `mlflow run`'s own CLI, with the numbers that
must agree compared; and the batch scripts run by bash with stand-ins for srun and Python: the
training's first start, requeue and resume, and a search's array element.

Real multi-process training is the DDP tests' job: these only parse and compare, so a line that
drifts from the pipeline (a renamed parameter, nodes and devices that disagree) fails here fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import mlflow.cli
import pytest
from click import UsageError
from mlflow.projects import _project_spec
from torch.distributed.run import get_args_parser

from pipeline import params as pipeline_params
from pipeline.data.synthetic import generate_dataset
from pipeline.entrypoints import entry_points
from pipeline.errors import PipelineError

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "scale-out.md"
README = ROOT / "README.md"
SBATCH = ROOT / "slurm" / "train.sbatch"
TUNE_SBATCH = ROOT / "slurm" / "tune.sbatch"
ENV_EXAMPLE = ROOT / "slurm" / "env.example"
# The entry point each batch script's srun line starts, and so what options after its name mean.
SBATCH_ENTRY_POINTS = {"slurm/train.sbatch": "train", "slurm/tune.sbatch": "tune"}
KUBERNETES_CONFIG = "kubernetes/kubernetes_config.json"
SEPARATORS = {"&&", "||", ";", "|"}
# Lightning takes a SLURM job of these names for an interactive session and then ignores SLURM.
INTERACTIVE_JOB_NAMES = {"bash", "interactive"}


# --- Reading commands -------------------------------------------------------------------------


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined."""
    return re.sub(r"\\\n\s*", " ", text).splitlines()


def documented_lines(doc: Path = DOCS) -> list[str]:
    """The command lines of the ```bash blocks of a document (docs/scale-out.md by default)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", doc.read_text(), re.MULTILINE | re.DOTALL)
    return [line for block in blocks for line in logical_lines(block) if line.strip()]


def commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line, as words, without leading VAR=value assignments."""
    result, words = [], []
    for word in [*shlex.split(line, comments=True), ";"]:
        if word in SEPARATORS:
            while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                words.pop(0)
            if words:
                result.append(words)
            words = []
        else:
            words.append(word)
    return result


def documented_commands() -> list[list[str]]:
    return [words for line in documented_lines() for words in commands(line)]


def pipeline_invocation(words: list[str]) -> tuple[str, list[str]] | None:
    """(entry point, its arguments) when the words run `python -m pipeline <entry point>`."""
    for index in range(1, len(words) - 2):
        interpreter = words[index - 1]
        if words[index : index + 2] == ["-m", "pipeline"] and (
            interpreter.rsplit("/", 1)[-1] in ("python", "python3") or interpreter == "$PYTHON"
        ):
            return words[index + 2], words[index + 3 :]
    return None


def params_class(entry_point: str) -> type:
    assert entry_point in entry_points(), f"`python -m pipeline {entry_point}`: no such entry point"
    cls = importlib.import_module(f"pipeline.entrypoints.{entry_point}").PARAMS
    return cls


def check_pipeline_args(entry_point: str, argv: list[str], *, values: bool = True):
    """The parameters of `python -m pipeline <entry point> <argv>`: every name exactly one the
    entry point has (its parser would also take an abbreviation), and, with `values`, every
    value as the pipeline parses and checks it, by parameter name."""
    cls = params_class(entry_point)
    known = {found.name for found in pipeline_params.parameters(cls)}
    unknown = sorted({word[2:] for word in argv if word.startswith("--")} - known)
    assert not unknown, f"`python -m pipeline {entry_point}` has no parameter {unknown}: {argv}"
    if not values:
        return None
    try:
        parsed = pipeline_params.parse(cls, argv, prog=f"python -m pipeline {entry_point}")
    except (PipelineError, SystemExit) as error:
        message = f"`python -m pipeline {entry_point} {shlex.join(argv)}`: {error}"
        raise AssertionError(message) from error
    return SimpleNamespace(**pipeline_params.flat_values(parsed))


def torchrun_args(words: list[str]) -> argparse.Namespace:
    """torchrun's own parse of its arguments; its options must be spelt out in full."""
    parser = get_args_parser()
    try:
        args = parser.parse_args(words[1:])
    except SystemExit as error:
        raise AssertionError(f"torchrun refuses {shlex.join(words)}") from error
    own = words[1 : len(words) - len(args.training_script_args) - 1]
    for word in own:
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            assert option in parser._option_string_actions, f"torchrun has no option {option}"
    return args


def node_count(nnodes: str) -> int:
    """torchrun's --nnodes: N, or MIN:MAX, which must be one number for a fixed world size."""
    low, _, high = nnodes.partition(":")
    assert not high or low == high, f"--nnodes {nnodes}: an elastic range, not a fixed count"
    return int(low)


def check_torchrun(words: list[str]) -> tuple[argparse.Namespace, object]:
    """A torchrun line: torchrun's parse, the pipeline's, and the world size both agree on."""
    args = torchrun_args(words)
    assert args.module and args.training_script == "pipeline", "run it as `-m pipeline`"
    entry_point, argv = args.training_script_args[0], args.training_script_args[1:]
    params = check_pipeline_args(entry_point, argv)
    assert node_count(args.nnodes) == params.num_nodes
    assert args.nproc_per_node == params.devices, "--nproc-per-node and --devices differ"
    if params.num_nodes > 1:
        assert args.rdzv_backend == "c10d" and args.rdzv_endpoint and args.rdzv_id != "none"
    return args, params


def check_mlflow_run(words: list[str]) -> dict:
    """An `mlflow run` line, as MLflow's CLI parses it, against the MLproject."""
    assert words[:2] == ["mlflow", "run"]
    try:
        options = mlflow.cli.run.make_context("mlflow run", words[2:]).params
    except UsageError as error:
        raise AssertionError(f"`{shlex.join(words)}`: {error}") from error
    assert options["uri"] == "."
    project = _project_spec.load_project(str(ROOT))
    declared = project.get_entry_point(options["entry_point"]).parameters
    for pair in options["param_list"]:
        name = pair.split("=", 1)[0]
        assert name in declared, f"entry point {options['entry_point']} has no parameter {name}"
    if options["backend"] == "kubernetes":
        assert options["backend_config"] == KUBERNETES_CONFIG
        assert (ROOT / KUBERNETES_CONFIG).is_file()
        # Without it MLflow pushes the docker_env image under its local name (docs/scale-out.md).
        assert options["build_image"], "the Kubernetes backend needs --build-image"
    return options


# --- The docs ---------------------------------------------------------------------------------


def test_docs_show_every_launcher() -> None:
    """Each way to scale out keeps its line: removing one fails here, not silently."""
    words = documented_commands()
    assert any(w[0] == "torchrun" and node_count(torchrun_args(w).nnodes) > 1 for w in words)
    assert any(w[0] == "sbatch" for w in words)
    assert any(w[:2] == ["mlflow", "run"] and "kubernetes" in w for w in words)
    single = [call for w in words if (call := pipeline_invocation(w)) and w[0] != "torchrun"]
    assert any(
        entry == "train" and "--devices" in argv and "--strategy" in argv for entry, argv in single
    )


def test_documented_pipeline_lines_use_its_parameters() -> None:
    checked = 0
    for words in documented_commands():
        if words[0] == "torchrun":
            check_torchrun(words)
        elif words[0] == "sbatch":
            script = next(word for word in words[1:] if not word.startswith("-"))
            assert (ROOT / script).is_file(), script
            assert script in SBATCH_ENTRY_POINTS, f"{script}: not a batch script of slurm/"
            # After the script's name: options for its srun line's `python -m pipeline ...`.
            check_pipeline_args(SBATCH_ENTRY_POINTS[script], words[words.index(script) + 1 :])
        elif words[:2] == ["mlflow", "run"]:
            check_mlflow_run(words)
        elif call := pipeline_invocation(words):
            check_pipeline_args(*call)
        else:
            continue
        checked += 1
    assert checked >= 8


# The README and every page of the documentation site.
DOCUMENTATION = [README, *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCUMENTATION, ids=lambda doc: doc.relative_to(ROOT).as_posix())
def test_documented_command_lines_use_the_pipelines_parameters(doc: Path) -> None:
    """Every `python -m pipeline` and `mlflow run` line a reader copies from the README or a
    docs page parses as the pipeline and MLflow's CLI parse it: an unknown entry point or a
    renamed parameter fails here first."""
    # The reader's own folder of photos that the pages' commands name (docs/your-photos.md).
    generate_dataset(Path("my_photos"), count=2, seed=0)
    for words in (w for line in documented_lines(doc) for w in commands(line)):
        if words[:2] == ["mlflow", "run"]:
            check_mlflow_run(words)
        elif call := pipeline_invocation(words):
            check_pipeline_args(*call)


def test_the_documentation_holds_the_commands_a_reader_runs() -> None:
    counted = {
        doc.name: sum(
            bool(words[:2] == ["mlflow", "run"] or pipeline_invocation(words))
            for line in documented_lines(doc)
            for words in commands(line)
        )
        for doc in DOCUMENTATION
    }
    assert counted["README.md"] >= 4 and sum(counted.values()) >= 25, counted


def test_docs_show_every_way_to_run_the_search() -> None:
    """The search on many machines keeps its three lines: compose, Kubernetes, SLURM."""
    words = documented_commands()
    assert any(w[0] == "sbatch" and TUNE_SBATCH.relative_to(ROOT).as_posix() in w for w in words)
    assert any(w[:2] == ["kubectl", "apply"] and "kubernetes/tune_job.yaml" in w for w in words)
    assert any(
        w[:2] == ["docker", "compose"] and "tune" in w and any(x.startswith("tuner=") for x in w)
        for w in words
    )


def test_documented_kubectl_apply_lines_name_files_of_the_repository() -> None:
    checked = 0
    for words in documented_commands():
        if words[:2] == ["kubectl", "apply"] and "-f" in words:
            path = words[words.index("-f") + 1]
            if path.startswith("~"):  # the filled-in copy of the Secret, outside the repository
                continue
            assert (ROOT / path).is_file(), f"`{shlex.join(words)}`: no {path}"
            checked += 1
    assert checked >= 2


def test_checks_catch_a_drifted_line() -> None:
    """The checks above can fail: a misspelt parameter, an abbreviation, a torchrun world that
    disagrees with the pipeline's, an unknown `-P`."""
    good = (
        "torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint h:29500 "
        "--rdzv-id 1 -m pipeline train --devices 8 --num_nodes 2 --strategy ddp"
    )
    for bad in (
        good.replace("--devices 8", "--device 8"),
        good.replace("--num_nodes 2", "--num_node 2"),
        good.replace("--nproc-per-node 8", "--nproc-per-node 4"),
        good.replace("--nnodes 2", "--nnodes 1:2"),
        good.replace("--nnodes", "--nnode"),
        good.replace("--strategy ddp", "--strategy ddp --max_epochs many"),
    ):
        with pytest.raises(AssertionError):
            check_torchrun(shlex.split(bad))
    with pytest.raises(AssertionError):
        check_pipeline_args("train", ["--batchsize", "8"])
    with pytest.raises(AssertionError):
        check_mlflow_run(shlex.split("mlflow run . -e train -P max_epoch=3"))


# --- The batch script, read -------------------------------------------------------------------


def sbatch_directives(script: Path = SBATCH) -> dict[str, str]:
    """#SBATCH options (`--name=value` or `--name value`; a flag maps to ""), checked to stand
    before the first command: sbatch reads none after it."""
    directives, commands_started = {}, False
    for line in script.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            assert not commands_started, f"#SBATCH after the first command is ignored: {line}"
            option, _, value = stripped.split(None, 1)[1].partition("=")
            if not value and " " in option:
                option, value = option.split(None, 1)
            directives[option] = value.strip()
        elif stripped and not stripped.startswith("#"):
            commands_started = True
    return directives


def srun_words(script: Path = SBATCH) -> list[str]:
    (line,) = [line for line in logical_lines(script.read_text()) if line.startswith("srun ")]
    return shlex.split(line)


def option_value(argv: list[str], name: str) -> str:
    assert argv.count(name) == 1, f"{name} given {argv.count(name)} times"
    return argv[argv.index(name) + 1]


def test_batch_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)


def test_batch_script_asks_for_one_task_per_gpu() -> None:
    directives = sbatch_directives()
    for option in ("--nodes", "--ntasks-per-node", "--gpus-per-node", "--cpus-per-task"):
        assert int(directives[option]) >= 1, option
    assert directives["--ntasks-per-node"] == directives["--gpus-per-node"]
    # Lightning refuses --ntasks without --ntasks-per-node; the per-node count is the one it checks.
    assert "--ntasks" not in directives
    assert directives["--job-name"] not in INTERACTIVE_JOB_NAMES
    assert "--requeue" in directives


def test_srun_passes_the_jobs_shape_to_the_pipeline() -> None:
    """--devices and --num_nodes come from SLURM's own variables for the job's shape, so an
    sbatch option that changes it changes them too; every name is a train parameter."""
    words = srun_words()
    call = pipeline_invocation(words)
    assert call and call[0] == "train", "srun must start `python -m pipeline train`"
    argv = [word for word in call[1] if word != "$@"]
    check_pipeline_args("train", argv, values=False)
    assert option_value(argv, "--devices") == "$SLURM_NTASKS_PER_NODE"
    assert option_value(argv, "--num_nodes") == "$SLURM_NNODES"
    assert option_value(argv, "--strategy") == "ddp"
    assert option_value(argv, "--accelerator") == "gpu"
    assert call[1][-1] == "$@", "the script's own arguments go last, so they can override"


# --- The batch script, run with stand-ins for srun and Python ---------------------------------


def stand_in(path: Path, script: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def cluster(tmp_path: Path) -> dict:
    """A fake allocation for the directives' shape: SLURM's variables as sbatch sets them, an
    `srun` that records its arguments and MLFLOW_RUN_ID, and a Python that stands in for
    slurm/open_run.py (numbering the runs it opens) and nothing else."""
    directives = sbatch_directives()
    bin_dir, records, shared = tmp_path / "bin", tmp_path / "records", tmp_path / "shared"
    bin_dir.mkdir()
    records.mkdir()
    stand_in(
        bin_dir / "srun",
        'n=$(ls "$RECORDS" | grep -c "^srun.*[.]args$" || true)\n'
        'printf "%s\\0" "$@" > "$RECORDS/srun$n.args"\n'
        'printf "%s" "$MLFLOW_RUN_ID" > "$RECORDS/srun$n.run_id"\n',
    )
    python = stand_in(
        bin_dir / "python",
        "[[ $1 == slurm/open_run.py && -f $1 ]] || exit 99\n"
        'echo opened >> "$RECORDS/opened"\n'
        'echo "run$(wc -l < "$RECORDS/opened")"\n',
    )
    env_file = tmp_path / "slurm.env"
    env_file.write_text(f"MLFLOW_TRACKING_URI=http://mlflow:5000\nUNET_PERSON_SHARED={shared}\n")
    env_file.chmod(0o600)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "RECORDS": str(records),
        "PYTHON": str(python),
        "UNET_PERSON_ENV_FILE": str(env_file),
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": directives["--job-name"],
        "SLURM_NNODES": directives["--nodes"],
        "SLURM_NTASKS_PER_NODE": directives["--ntasks-per-node"],
        "SLURM_GPUS_PER_NODE": directives["--gpus-per-node"],
        "SLURM_CPUS_PER_TASK": directives["--cpus-per-task"],
    }
    return {"env": env, "records": records, "shared": shared, "env_file": env_file}


def submit(cluster: dict, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run_script(SBATCH, cluster, *args, **env)


def run_script(script: Path, cluster: dict, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The batch script as sbatch starts it on the allocation: bash, in the fake environment."""
    return subprocess.run(
        ["bash", str(script), *args],
        env={**cluster["env"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def srun_calls(cluster: dict) -> list[tuple[list[str], str]]:
    """(arguments, MLFLOW_RUN_ID) of each srun the script ran, in order."""
    records: Path = cluster["records"]
    return [
        (
            (records / f"srun{n}.args").read_text().split("\0")[:-1],
            (records / f"srun{n}.run_id").read_text(),
        )
        for n in range(len(list(records.glob("srun*.args"))))
    ]


def test_batch_script_starts_every_task_in_one_run(cluster: dict) -> None:
    result = submit(cluster, "--max_epochs", "3")
    assert result.returncode == 0, result.stderr
    ((argv, run_id),) = srun_calls(cluster)
    call = pipeline_invocation(argv)
    assert call and call[0] == "train"
    params = check_pipeline_args("train", call[1])
    directives = sbatch_directives()
    assert params.devices == directives["--ntasks-per-node"]
    assert params.num_nodes == int(directives["--nodes"])
    assert params.max_epochs == 3
    assert params.num_workers == int(directives["--cpus-per-task"]) - 1
    # Checkpoints and data on the shared folder, where every node finds them.
    assert Path(params.checkpoint_dir) == cluster["shared"] / "checkpoints"
    assert Path(params.data_dir).is_relative_to(cluster["shared"])
    assert run_id == "run1"
    assert (cluster["shared"] / "checkpoints" / "slurm-4242.run_id").read_text() == "run1\n"


def test_a_requeued_job_resumes_its_run(cluster: dict) -> None:
    """A requeued job keeps its id: the second start finds the run the first opened."""
    assert submit(cluster).returncode == 0
    requeued = submit(cluster)
    assert requeued.returncode == 0, requeued.stderr
    assert [run_id for _, run_id in srun_calls(cluster)] == ["run1", "run1"]
    assert (cluster["records"] / "opened").read_text().count("opened") == 1
    # Another job opens a run of its own.
    assert submit(cluster, SLURM_JOB_ID="4243").returncode == 0
    assert srun_calls(cluster)[-1][1] == "run2"


def test_a_given_run_is_continued(cluster: dict) -> None:
    """MLFLOW_RUN_ID in sbatch's environment: a new job continues that run, opening none."""
    result = submit(cluster, MLFLOW_RUN_ID="earlier0run", SLURM_JOB_ID="5000")
    assert result.returncode == 0, result.stderr
    assert srun_calls(cluster)[-1][1] == "earlier0run"
    assert not (cluster["records"] / "opened").exists()
    assert (cluster["shared"] / "checkpoints" / "slurm-5000.run_id").read_text() == "earlier0run\n"


def test_batch_script_stops_without_a_tracking_server(cluster: dict) -> None:
    cluster["env_file"].write_text(f"UNET_PERSON_SHARED={cluster['shared']}\n")
    result = submit(cluster)
    assert result.returncode != 0
    assert "MLFLOW_TRACKING_URI" in result.stderr
    assert srun_calls(cluster) == []


def test_batch_script_warns_about_a_readable_env_file(cluster: dict) -> None:
    cluster["env_file"].chmod(0o644)
    result = submit(cluster)
    assert result.returncode == 0, result.stderr
    assert "chmod 600" in result.stderr


# --- The search's batch script: an array of tune workers --------------------------------------

STORAGE = "postgresql+psycopg2://optuna@db.example.internal:5432/optuna"


def test_tune_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(TUNE_SBATCH)], check=True)


def test_tune_script_is_an_array_of_one_gpu_workers() -> None:
    directives = sbatch_directives(TUNE_SBATCH)
    match = re.fullmatch(r"(\d+)-(\d+)(%\d+)?", directives["--array"])
    assert match and int(match[2]) > int(match[1]), directives["--array"]
    for option in ("--nodes", "--ntasks-per-node", "--gpus-per-node"):
        assert directives[option] == "1", option
    assert int(directives["--cpus-per-task"]) >= 1
    assert "--ntasks" not in directives
    assert directives["--job-name"] not in INTERACTIVE_JOB_NAMES
    assert "--requeue" in directives
    assert "%a" in directives["--output"], "one log per element: %a is its index"


def test_tune_srun_starts_one_worker_on_the_given_storage() -> None:
    directives = sbatch_directives(TUNE_SBATCH)
    call = pipeline_invocation(srun_words(TUNE_SBATCH))
    assert call and call[0] == "tune", "srun must start `python -m pipeline tune`"
    argv = [word for word in call[1] if word != "$@"]
    check_pipeline_args("tune", argv, values=False)
    assert option_value(argv, "--workers") == "1"
    assert option_value(argv, "--storage") == "$OPTUNA_STORAGE"
    assert option_value(argv, "--devices") == directives["--gpus-per-node"]
    assert call[1][-1] == "$@", "the script's own arguments go last, so they can override"


@pytest.fixture
def tune_cluster(cluster: dict) -> dict:
    """The fake allocation as element 1 of tune.sbatch's array: its directives' shape, the
    array's variables, a storage in the env file, and an srun that also records the environment
    it hands on (MLFLOW_RUN_ID as `unset` when there is none)."""
    directives = sbatch_directives(TUNE_SBATCH)
    bin_dir = Path(cluster["env"]["PATH"].split(os.pathsep)[0])
    stand_in(
        bin_dir / "srun",
        'n=$(ls "$RECORDS" | grep -c "^srun.*[.]args$" || true)\n'
        'printf "%s\\0" "$@" > "$RECORDS/srun$n.args"\n'
        'printf "%s" "${MLFLOW_RUN_ID-unset}" > "$RECORDS/srun$n.run_id"\n'
        'env -0 > "$RECORDS/srun$n.env"\n',
    )
    cluster["env_file"].write_text(
        "MLFLOW_TRACKING_URI=http://mlflow:5000\n"
        f"UNET_PERSON_SHARED={cluster['shared']}\n"
        f"OPTUNA_STORAGE={STORAGE}\n"
    )
    env = {
        **cluster["env"],
        "SLURM_JOB_ID": "4300",
        "SLURM_ARRAY_JOB_ID": "4299",
        "SLURM_ARRAY_TASK_ID": "1",
        "SLURM_JOB_NAME": directives["--job-name"],
        "SLURM_NNODES": directives["--nodes"],
        "SLURM_NTASKS_PER_NODE": directives["--ntasks-per-node"],
        "SLURM_GPUS_PER_NODE": directives["--gpus-per-node"],
        "SLURM_CPUS_PER_TASK": directives["--cpus-per-task"],
    }
    return {**cluster, "env": env}


def run_tune_element(cluster: dict, *args: str, **env: str):
    """The element's result, and the params of the one `python -m pipeline tune` it started."""
    result = run_script(TUNE_SBATCH, cluster, *args, **env)
    assert result.returncode == 0, result.stderr
    ((argv, _),) = srun_calls(cluster)
    call = pipeline_invocation(argv)
    assert call and call[0] == "tune", argv
    return result, check_pipeline_args("tune", call[1])


def srun_environment(cluster: dict, n: int = 0) -> dict[str, str]:
    text = (cluster["records"] / f"srun{n}.env").read_text()
    return dict(entry.split("=", 1) for entry in text.split("\0") if "=" in entry)


def test_tune_element_runs_one_worker_of_the_study(tune_cluster: dict) -> None:
    _, params = run_tune_element(tune_cluster, "--n_trials", "40", "--sampler", "random")
    directives = sbatch_directives(TUNE_SBATCH)
    assert params.workers == 1
    assert params.storage == STORAGE
    assert params.study_name == "unet-person"
    assert params.n_trials == 40 and params.sampler == "random"
    assert params.accelerator == "gpu" and params.devices == directives["--gpus-per-node"]
    assert params.num_workers == int(directives["--cpus-per-task"]) - 1
    # The data, the trials' checkpoints and the workers' locks where every node finds them.
    shared: Path = tune_cluster["shared"]
    assert Path(params.checkpoint_dir) == shared / "checkpoints"
    assert Path(params.raw_dir).is_relative_to(shared)
    assert Path(params.processed_dir).is_relative_to(shared)
    assert Path(srun_environment(tune_cluster)["UNET_PERSON_CACHE"]).is_relative_to(shared)
    # A folder of its own for trials.csv and the figures: other elements write theirs.
    assert Path(params.output_dir).is_relative_to(shared)
    assert Path(params.output_dir).name == "4299_1" and Path(params.output_dir).is_dir()
    # A tune run of its own: nothing opened for it beforehand.
    assert srun_calls(tune_cluster)[0][1] == "unset"
    assert not (tune_cluster["records"] / "opened").exists()


def test_each_tune_element_opens_a_run_of_its_own(tune_cluster: dict) -> None:
    """An MLFLOW_RUN_ID in sbatch's environment is not handed on: N workers would share it."""
    run_tune_element(tune_cluster, MLFLOW_RUN_ID="earlier0run")
    assert srun_calls(tune_cluster)[0][1] == "unset"
    assert "MLFLOW_RUN_ID" not in srun_environment(tune_cluster)


def test_the_study_is_named_by_tune_study_name_and_options_after_the_script_win(
    tune_cluster: dict,
) -> None:
    _, params = run_tune_element(tune_cluster, TUNE_STUDY_NAME="wider-sweep")
    assert params.study_name == "wider-sweep"
    for record in tune_cluster["records"].glob("srun*"):
        record.unlink()
    _, params = run_tune_element(
        tune_cluster, "--study_name", "other", "--storage", "postgresql://tuner@db2/optuna"
    )
    assert params.study_name == "other" and params.storage == "postgresql://tuner@db2/optuna"


@pytest.mark.parametrize("variable", ["OPTUNA_STORAGE", "MLFLOW_TRACKING_URI"])
def test_tune_script_stops_without_a_storage_or_a_server(tune_cluster: dict, variable: str) -> None:
    env_file: Path = tune_cluster["env_file"]
    kept = [line for line in env_file.read_text().splitlines() if not line.startswith(variable)]
    env_file.write_text("\n".join(kept) + "\n")
    result = run_script(TUNE_SBATCH, tune_cluster)
    assert result.returncode != 0
    assert f"set {variable} in {env_file}" in result.stderr
    assert srun_calls(tune_cluster) == []


def test_tune_script_warns_about_a_readable_env_file(tune_cluster: dict) -> None:
    tune_cluster["env_file"].chmod(0o644)
    result, _ = run_tune_element(tune_cluster)
    assert "chmod 600" in result.stderr


def test_env_example_names_every_setting_the_scripts_require() -> None:
    defined = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    for script in (SBATCH, TUNE_SBATCH):
        required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?set ", script.read_text()))
        assert required, script
        assert required <= defined, f"{script.name} requires {sorted(required - defined)}"
    assert "OPTUNA_STORAGE" in defined
    assert "TUNE_STUDY_NAME" in ENV_EXAMPLE.read_text()


def test_open_run_opens_a_run_the_pipeline_can_close() -> None:
    """slurm/open_run.py for real, into the test's own store: a RUNNING run in the pipeline's
    experiment with a heartbeat, so one whose job dies before training is closed as abandoned."""
    import importlib.util

    from mlflow.tracking import MlflowClient

    from pipeline.tracking.runs import DEFAULT_EXPERIMENT
    from pipeline.tracking.tags import HEARTBEAT_TAG

    spec = importlib.util.spec_from_file_location("open_run", ROOT / "slurm" / "open_run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = MlflowClient().get_run(module.open_run())
    assert run.info.status == "RUNNING"
    assert run.info.run_name == "train"
    assert HEARTBEAT_TAG in run.data.tags
    experiment = MlflowClient().get_experiment(run.info.experiment_id)
    assert experiment.name == DEFAULT_EXPERIMENT
