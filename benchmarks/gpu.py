"""Training images per second on a GPU at 256 px with the `default` recipe's U-Net (width 64,
depth 4, batch norm), by batch size, precision and compilation, against the card's compute
ceiling (see EXPLANATION). Needs CUDA: without it, says so and exits 1, writing nothing.

    python -m benchmarks --gpu                        # the whole grid
    python -m benchmarks gpu --batch-sizes 64 --modes eager
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.measure import check_repeats, load_average, median
from benchmarks.report import Headline, markdown_table
from pipeline.data.datamodule import PersonDataModule
from pipeline.model.inputs import to_model_input
from pipeline.model.unet import NetworkConfig, UNet
from pipeline.training.losses import segmentation_loss
from pipeline.training.recipes import DEFAULT

TITLE = "GPU training throughput"
NEEDS_GPU = True
TARGET = 1400.0
TARGET_TEXT = ">= 1,400 img/s bf16 on an H100/H200-class card"
PRECISIONS = {"fp32": None, "bf16-mixed": torch.bfloat16}
MODES = ("eager", "compile")
TOP_KERNELS = 12
LOADER_IMAGES = 400
DEVICE = "cuda"
# Dense (no sparsity) peak TFLOPS from NVIDIA's data sheets: bf16 and TF32 tensor cores, and
# plain FP32. fp32 runs are held against TF32: torch lets cuDNN run fp32 convolutions on TF32
# tensor cores by default (torch.backends.cudnn.allow_tf32), and convolutions are the work here.
# Matched in order against torch.cuda.get_device_name().
PEAK_TFLOPS = (
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100 NVL", {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    ("H100 PCIe", {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM: "NVIDIA H100 80GB HBM3"
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
)
HOPPER_CLASS = ("H100", "H200")
CEILING_KEY = {"fp32": "tf32", "bf16-mixed": "bf16"}
EXPLANATION = """\
One training step as the pipeline takes it (the `default` recipe: `UNet` of
`pipeline/model/unet.py` at width 64, depth 4, batch norm; BCE + soft Dice from
`pipeline/training/losses.py`; AdamW; gradient clipping at norm 1), driven by torch directly,
in `channels_last` layout with `torch.backends.cudnn.benchmark` on (fixed sizes; train
sets both on CUDA), on batches already on the GPU (uint8 made float as the pipeline does
on the device), 256 x 256. For each batch size, precision (fp32, and bf16 under
`torch.autocast` as Lightning's `bf16-mixed` does) and mode (eager, or the network under
`torch.compile` with its default mode, compiled once per precision with a dynamic batch
dimension): untimed warm-up steps, then
timed repeats of several steps each, synchronised; the figure is the median repeat.

**Ceiling**: FLOPs of one training step (forward and backward, counted by torch's
`FlopCounterMode`) per image, times images per second, over the card's dense peak: bf16 runs
against its bf16 tensor-core peak, fp32 runs against its TF32 peak (cuDNN runs fp32
convolutions on TF32 tensor cores by default; the plain FP32 peak is recorded too). A card
not in the table gets no ceiling. When the best bf16 figure is under the target, the run
records torch.profiler's top CUDA kernels of that configuration, shown below its table.

**Loader**: images per second through the pipeline's own `PersonDataModule` over a preprocessed
cache of generated photos at the same size, with the worker count and pinned memory train
picks on this machine, moved to the GPU and made float: it should deliver at least twice the
best training rate.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per configuration")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (>= 3)")


def peak_tflops(card: str) -> dict[str, float] | None:
    for fragment, peaks in PEAK_TFLOPS:
        if fragment in card:
            return peaks
    return None


def require_cuda() -> None:
    if not torch.cuda.is_available():
        print(
            "no GPU is present (torch.cuda.is_available() is False): the GPU benchmark needs "
            "CUDA and a CUDA build of torch; nothing was measured or written"
        )
        raise SystemExit(1)


class Step:
    """One training step of the pipeline's network, loss and optimiser, on fixed batches."""

    def __init__(self, options: argparse.Namespace, precision: str, mode: str) -> None:
        torch.manual_seed(0)
        net = UNet(NetworkConfig(base_channels=options.width, depth=options.depth, batch_norm=True))
        self.net = net.to(DEVICE, memory_format=torch.channels_last)
        self.model = torch.compile(self.net) if mode == "compile" else self.net
        self.loss = segmentation_loss(DEFAULT.loss)
        self.optimizer = torch.optim.AdamW(
            self.net.parameters(),
            lr=DEFAULT.optimization.lr,
            weight_decay=DEFAULT.optimization.weight_decay,
        )
        self.dtype = PRECISIONS[precision]
        self.side = options.image_size
        self.compiled = mode == "compile"

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.randint(0, 256, (size, 3, self.side, self.side), dtype=torch.uint8)
        images = to_model_input(pixels.to(DEVICE)).contiguous(memory_format=torch.channels_last)
        masks = (torch.rand(size, 1, self.side, self.side, device=DEVICE) > 0.5).float()
        if self.compiled:  # one compiled graph for every batch size
            torch._dynamo.mark_dynamic(images, 0)
        return images, masks

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        autocast = torch.autocast(
            DEVICE, dtype=self.dtype or torch.bfloat16, enabled=self.dtype is not None
        )
        with autocast:
            loss = self.loss(self.model(images), masks)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), DEFAULT.optimization.gradient_clip)
        self.optimizer.step()


def images_per_second(step: Step, batch: int, options: argparse.Namespace) -> list[float]:
    images, masks = step.batch(batch)
    for _ in range(options.warmup):
        step(images, masks)
    torch.cuda.synchronize()
    rates = []
    for _ in range(options.repeats):
        started = time.perf_counter()
        for _ in range(options.steps):
            step(images, masks)
        torch.cuda.synchronize()
        rates.append(batch * options.steps / (time.perf_counter() - started))
    return rates


def flops_per_image(options: argparse.Namespace) -> float:
    """FLOPs of one fp32 training step (forward and backward) per image."""
    step = Step(options, "fp32", "eager")
    images, masks = step.batch(2)
    with FlopCounterMode(display=False) as counter:
        step.loss(step.net(images), masks).backward()
    return counter.get_total_flops() / 2


def top_kernels(step: Step, batch: int) -> list[dict]:
    """torch.profiler's CUDA kernels of a few steps, most time first."""
    from torch.profiler import ProfilerActivity, profile

    images, masks = step.batch(batch)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(5):
            step(images, masks)
        torch.cuda.synchronize()
    events = [event for event in profiler.key_averages() if event.device_time_total > 0]
    total = sum(event.device_time_total for event in events) or 1.0
    events.sort(key=lambda event: event.device_time_total, reverse=True)
    return [
        {
            "kernel": event.key[:120],
            "calls": event.count,
            "cuda_ms": round(event.device_time_total / 1000, 2),
            "share": round(event.device_time_total / total, 3),
        }
        for event in events[:TOP_KERNELS]
    ]


def loader_images_per_second(options: argparse.Namespace, batch: int) -> dict:
    """The pipeline's loader as train runs it on this machine: workers, pinned memory, the copy
    to the GPU and the float conversion, for at least a second after a warm-up pass."""
    from benchmarks.loader import pipeline_workers

    cache = options.workspace.cache(LOADER_IMAGES, options.image_size)
    workers = pipeline_workers()
    datamodule = PersonDataModule(cache, batch, workers, pin_memory=True)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()

    def one_pass() -> int:
        count = 0
        for images, masks in loader:
            batch_on_gpu = (
                images.to(DEVICE, non_blocking=True),
                masks.to(DEVICE, non_blocking=True),
            )
            datamodule.on_after_batch_transfer(batch_on_gpu, 0)
            count += len(images)
        torch.cuda.synchronize()
        return count

    one_pass()
    rates = []
    for _ in range(options.repeats):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < 1.0:
            count += one_pass()
        rates.append(count / (time.perf_counter() - started))
    return {"images_per_s": median(rates, 1), "workers": workers, "batch_size": batch}


def measure_grid(
    options: argparse.Namespace, flops: float, peaks: dict[str, float] | None
) -> tuple[list[dict], dict[tuple[str, str], Step]]:
    """A row per precision, mode and batch size; the steps, kept warm for the profile."""
    rows, steps = [], {}
    for precision in options.precisions:
        for mode in options.modes:
            step = steps[precision, mode] = Step(options, precision, mode)
            for batch in options.batch_sizes:
                started = time.perf_counter()
                try:
                    rates = images_per_second(step, batch, options)
                except Exception as error:  # e.g. the compiler's toolchain missing: say so
                    rows.append(
                        {
                            "precision": precision,
                            "mode": mode,
                            "batch_size": batch,
                            "error": f"{type(error).__name__}: {str(error)[:300]}",
                        }
                    )
                    print(f"{precision} {mode} batch {batch}: failed: {rows[-1]['error']}")
                    continue
                rate = median(rates, 1)
                ceiling = None
                if peaks:
                    ceiling = round(flops * rate / (peaks[CEILING_KEY[precision]] * 1e12), 3)
                rows.append(
                    {
                        "precision": precision,
                        "mode": mode,
                        "batch_size": batch,
                        "images_per_s": rate,
                        "repeats_images_per_s": [round(r, 1) for r in rates],
                        "achieved_tflops": round(flops * rate / 1e12, 1),
                        "ceiling_fraction": ceiling,
                        "seconds_incl_compile": round(time.perf_counter() - started, 1),
                        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
                    }
                )
                print(f"{precision} {mode} batch {batch}: {rate:.0f} img/s", flush=True)
                torch.cuda.reset_peak_memory_stats()
    return rows, steps


def run(options: argparse.Namespace) -> dict:
    require_cuda()
    check_repeats(options.repeats)
    torch.backends.cudnn.benchmark = True  # fixed sizes: as train sets it on CUDA
    card = torch.cuda.get_device_name()
    peaks = peak_tflops(card)
    before = load_average()
    flops = flops_per_image(options)
    rows, steps = measure_grid(options, flops, peaks)
    measured = [row for row in rows if "error" not in row]
    if not measured:
        raise RuntimeError(f"no configuration could be measured: {rows}")
    bf16 = [row for row in measured if row["precision"] == "bf16-mixed"]
    best = max(bf16 or measured, key=lambda row: row["images_per_s"])
    kernels = None
    if best["precision"] != "bf16-mixed" or best["images_per_s"] < TARGET:
        kernels = top_kernels(steps[best["precision"], best["mode"]], best["batch_size"])
    loader = loader_images_per_second(options, max(options.batch_sizes))
    hopper = any(name in card for name in HOPPER_CLASS)
    figures = {
        "ratio": round(best["images_per_s"] / TARGET, 3),
        "target": TARGET,
        "met": best["images_per_s"] >= TARGET if hopper and best in bf16 else None,
        "card": card,
        "peak_tflops": peaks,
        "flops_per_image": round(flops),
        "best": best,
        "rows": rows,
        "top_kernels": kernels,
        "loader": {
            **loader,
            "ratio_to_best_training": round(loader["images_per_s"] / best["images_per_s"], 2),
        },
        "image_size": options.image_size,
        "width": options.width,
        "depth": options.depth,
        "steps": options.steps,
        "warmup": options.warmup,
        "repeats": options.repeats,
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        },
        "tf32_convolutions": torch.backends.cudnn.allow_tf32,
        "load_average": {"before": before, "after": load_average()},
    }
    print(table(figures))
    return figures


def headline(figures: dict) -> Headline:
    best = figures["best"]
    ceiling = best["ceiling_fraction"]
    return Headline(
        figures=(
            f"{figures['card']}: best {best['precision']} {best['images_per_s']:.0f} img/s "
            f"({best['mode']}, batch {best['batch_size']}); loader "
            f"{figures['loader']['images_per_s']:.0f} img/s"
        ),
        ratio_text=f"{ceiling:.0%} of ceiling"
        if ceiling is not None
        else "no ceiling (card unknown)",
        target=TARGET_TEXT,
        met=figures["met"],
    )


def table(figures: dict) -> str:
    header = ["precision", "mode", "batch", "img/s", "TFLOPS achieved", "share of ceiling"]
    rows = []
    for row in figures["rows"]:
        setting = [row["precision"], row["mode"], row["batch_size"]]
        if "error" in row:
            rows.append([*setting, f"failed: {row['error'][:80]}", "", "", ""])
            continue
        share = row["ceiling_fraction"]
        rows.append(
            [
                *setting,
                f"{row['images_per_s']:.0f}",
                f"{row['achieved_tflops']:.1f}",
                f"{share:.1%}" if share is not None else "n/a",
                row["max_memory_gib"],
            ]
        )
    return markdown_table([*header, "peak memory GiB"], rows, text_columns=2)


def kernel_table(kernels: list[dict]) -> str:
    rows = [
        [
            f"`{kernel['kernel'].replace('|', chr(92) + '|')}`",
            kernel["calls"],
            kernel["cuda_ms"],
            f"{kernel['share']:.1%}",
        ]
        for kernel in kernels
    ]
    return markdown_table(["CUDA kernel", "calls", "ms", "share"], rows)


def section(results: dict[str, dict]) -> str:
    parts = [f"## {TITLE}\n\n{EXPLANATION}"]
    for machine, figures in sorted(results.items()):
        facts, versions, best = figures["machine"], figures["versions"], figures["best"]
        loader = figures["loader"]
        peaks = figures["peak_tflops"]
        ceiling = (
            f"peaks used: {peaks['bf16']} TFLOPS bf16, {peaks['tf32']} TF32 (fp32 runs), "
            f"{peaks['fp32']} plain FP32"
            if peaks
            else "card not in the table of peaks: no ceiling computed"
        )
        lines = [
            f"### {figures['card']} ({facts['cpu']}, {facts['cores']} cores)",
            "",
            f"`{machine}`, {figures['date']}: torch {versions['torch']}, CUDA "
            f"{versions['cuda']}, cuDNN {versions['cudnn']}; {figures['image_size']} px, width "
            f"{figures['width']}, depth {figures['depth']}; {figures['flops_per_image'] / 1e9:.1f}"
            f" GFLOP per image per training step; {ceiling}. Best: {best['images_per_s']:.0f} "
            f"img/s ({best['precision']}, {best['mode']}, batch {best['batch_size']}). Loader: "
            f"{loader['images_per_s']:.0f} img/s with {loader['workers']} workers at batch "
            f"{loader['batch_size']}, {loader['ratio_to_best_training']}x the best training "
            "rate.",
            "",
            table(figures),
        ]
        if figures["top_kernels"]:
            lines += [
                "",
                f"Under the target of {TARGET:,.0f} img/s: the top CUDA kernels of the best "
                "configuration (torch.profiler, 5 steps):",
                "",
                kernel_table(figures["top_kernels"]),
            ]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)
