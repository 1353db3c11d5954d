"""Where and how long a fit runs: the runtime settings, and what `auto` means on this machine.

Checked when the config is built (at the command line, before any run opens or any step
runs): Lightning would only refuse a bad value after download, preprocess and data loading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from pipeline.errors import PipelineError
from pipeline.settings import AUTO, FALSE_WORDS, TRUE_WORDS, check_settings, parse_bool, setting

PRECISIONS = ("auto", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
MAX_TIME = re.compile(r"^\d+:\d{1,2}:\d{1,2}:\d{1,2}$")
CACHE_SIZE = re.compile(r"^\d+(\.\d+)?(B|KB|MB|GB|TB)$")
DEVICES = re.compile(r"^(auto|-1|\d+|\d+(,\d+)*,?)$")
# Lightning's launchers that start one process per device and keep the trainer in it. ddp_spawn
# and ddp_fork are left out: spawn pickles the trainer with its MLflow journal, and fork breaks
# CUDA and MLflow's threads.
STRATEGIES = ("auto", "ddp")
# torch.compile's modes (all with the inductor backend); aot_eager traces the network, forward
# and backward, as inductor does but runs the traced graphs as they are: no compiler needed,
# for checking on any machine that the network compiles.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
COMPILE_BACKENDS = ("aot_eager",)


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how long train steps run; passed to every train step under the same names."""

    precision: str = setting(
        "auto", "32-true, 16-mixed, bf16-mixed or auto (best the card has)", choices=PRECISIONS
    )
    accelerator: str = setting("auto", "auto, cpu, gpu, ...", choices=ACCELERATORS)
    devices: str = setting(
        "auto",
        "devices per node, one process each: auto (all GPUs, else 1), a count, or a list like 0,1",
    )
    num_nodes: int = setting(
        1,
        "machines of a distributed fit; each starts the same command (torchrun, srun); "
        "checkpoint_dir must be on storage all of them see",
        minimum=1,
    )
    strategy: str = setting(
        "auto",
        "auto (DDP when there are several devices) or ddp: one process per device, only the "
        "first logs to MLflow; the global batch is batch_size x devices x num_nodes",
        choices=STRATEGIES,
    )
    channels_last: str = setting(
        AUTO, "auto (on for CUDA), true or false: NHWC layout, faster on tensor cores"
    )
    compile: str = setting(
        "false",
        "torch.compile the U-Net: false, true (mode default), a mode (reduce-overhead, "
        "max-autotune, max-autotune-no-cudagraphs) or aot_eager (traced, not compiled)",
    )
    cudnn_benchmark: str = setting(
        AUTO,
        "auto (on for CUDA: image sizes are fixed), true or false: cuDNN times its algorithms "
        "first and keeps the fastest",
    )
    num_workers: int = setting(-1, "data loader workers; -1 = automatic", minimum=-1)
    max_time: str = setting("", "wall-clock budget DD:HH:MM:SS; empty = no limit")
    checkpoint_dir: str = setting("checkpoints", "local folder for resumable checkpoints")
    checkpoint_every: int = setting(
        500,
        "training steps between last.ckpt writes within an epoch when data_dir holds shards "
        "(their loader resumes mid-epoch); 0 = at epoch ends only, as always for arrays",
        minimum=0,
    )
    cache_size: str = setting(
        "10GB",
        "local disk that streaming shards (data_dir on s3://) may fill, e.g. 500MB or 50GB, for "
        "each of train's two loaders; chunks beyond it are evicted, though the two in use stay "
        "(up to 128MB) (under UNET_PERSON_CACHE/streams)",
    )

    def __post_init__(self) -> None:
        check_settings(self)
        if not DEVICES.match(self.devices.replace(" ", "")):
            raise PipelineError(
                f"parameter devices={self.devices!r} is not auto, a count (1, or -1 for all) or "
                "a list of device indices like 0,1"
            )
        for name in ("channels_last", "cudnn_benchmark"):
            resolve_switch(name, getattr(self, name), auto=False)
        compile_options(self.compile)
        if not CACHE_SIZE.match(self.cache_size):
            raise PipelineError(
                f"parameter cache_size={self.cache_size!r} is not a size like 500MB or 50GB "
                "(a number and B, KB, MB, GB or TB)"
            )
        if self.max_time and not MAX_TIME.match(self.max_time):
            raise PipelineError(
                f"parameter max_time={self.max_time!r} is not DD:HH:MM:SS (e.g. 00:12:00:00 for "
                "12 hours); leave it empty for no limit"
            )


def resolve_switch(name: str, text: str, auto: bool) -> bool:
    """An auto/true/false parameter's value, `auto` standing for what suits this machine."""
    if str(text).strip().lower() == AUTO:
        return auto
    try:
        return parse_bool(name, text)
    except PipelineError:
        raise PipelineError(f"parameter {name}={text!r} is not auto, true or false") from None


def compile_options(text: str) -> dict[str, str] | None:
    """torch.compile's backend and mode for the `compile` parameter; None to run eagerly."""
    value = str(text).strip().lower()
    if value in FALSE_WORDS:
        return None
    if value in TRUE_WORDS:
        return {"backend": "inductor", "mode": "default"}
    if value in COMPILE_BACKENDS:
        return {"backend": value}
    if value in COMPILE_MODES:
        return {"backend": "inductor", "mode": value}
    raise PipelineError(
        f"parameter compile={text!r} is not false, true, a torch.compile mode "
        f"({', '.join(COMPILE_MODES)}) or {', '.join(COMPILE_BACKENDS)}"
    )


def compile_tag(options: dict[str, str] | None) -> str:
    """The `compile` setting as the run records it: false, or backend:mode."""
    if options is None:
        return "false"
    return ":".join(options.values())


@dataclass(frozen=True)
class Hardware:
    accelerator: str
    devices: int | str | list[int]
    precision: str
    num_workers: int
    on_gpu: bool
    channels_last: bool
    compile: dict[str, str] | None  # torch.compile's arguments; None runs eagerly
    cudnn_benchmark: bool


def resolve_hardware(runtime: RuntimeConfig) -> Hardware:
    """Turn the `auto` settings into what this machine supports, so the run records real values."""
    on_gpu = torch.cuda.is_available() and runtime.accelerator in ("auto", "gpu", "cuda")
    precision = runtime.precision
    if precision == "auto":
        if on_gpu:
            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            precision = "32-true"
    devices: int | str | list[int] = runtime.devices
    if runtime.devices.isdigit():
        devices = int(runtime.devices)
    elif "," in runtime.devices:
        devices = [int(device) for device in runtime.devices.split(",") if device.strip()]
    workers = runtime.num_workers
    if workers < 0:
        # Reading a memory map is cheap; on a CPU, workers would only steal the cores training
        # uses. On GPUs, each process of the node gets its share of half the cores.
        processes = _processes_per_node(devices) if on_gpu else 1
        cores = torch.multiprocessing.cpu_count() or 2
        workers = max(1, min(8, cores // (2 * processes))) if on_gpu else 0
    return Hardware(
        accelerator=runtime.accelerator,
        devices=devices,
        precision=precision,
        num_workers=workers,
        on_gpu=on_gpu,
        # Both pay off on CUDA (tensor cores want NHWC; the image size never changes).
        channels_last=resolve_switch("channels_last", runtime.channels_last, auto=on_gpu),
        compile=compile_options(runtime.compile),
        cudnn_benchmark=resolve_switch("cudnn_benchmark", runtime.cudnn_benchmark, auto=on_gpu),
    )


def _processes_per_node(devices: int | str | list[int]) -> int:
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, int) and devices > 0:
        return devices
    return max(1, torch.cuda.device_count())  # auto and -1: every GPU
