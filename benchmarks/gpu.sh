#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md, in one run of a few minutes on a GPU machine (an estimate:
# not yet run on one): `python -m benchmarks --gpu` (training img/s at 256 px, width 64: batch
# 16/32/64, fp32 and bf16, eager and compiled), then one `python -m pipeline main` on generated
# data at 256 px.
#
# Needs: a Python with a CUDA build of torch and this project's dependencies (`pip install -e .`
# in the repository), and gcc for torch.compile's kernels. Set PYTHON to choose the interpreter
# (default: .venv/bin/python when there is one, else python3).
#
# Writes under $OUT (default ./gpu-out): gpu-benchmark.log, main.log, gpu-pipeline.log,
# results/<machine>.json and BENCHMARKS.md written from that JSON alone. To publish the figures,
# copy results/<machine>.json into benchmarks/results/ and run `python -m benchmarks report`.
#
#   bash benchmarks/gpu.sh                    # OUT=./gpu-out
#   OUT=/tmp/gpu MAIN_SOURCE=synthetic:300 bash benchmarks/gpu.sh
set -euo pipefail

repository="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repository"
out="${OUT:-$repository/gpu-out}"
main_source="${MAIN_SOURCE:-synthetic:600}"
main_epochs="${MAIN_EPOCHS:-10}"
if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
else
    python=python3
fi

if ! "$python" -c 'import lightning, mlflow, pipeline, torch' 2>/dev/null; then
    echo "gpu.sh: $python cannot import torch, lightning, mlflow and this project." >&2
    echo "Install them first, e.g. python3 -m venv .venv && .venv/bin/pip install -e ." >&2
    echo "(a CUDA build of torch: PyPI's default torch wheel is one), or set PYTHON." >&2
    exit 2
fi
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    cuda="$("$python" -c 'import torch; print(torch.version.cuda)')"
    echo "gpu.sh: torch sees no GPU (its CUDA version: $cuda; None means a CPU-only build)." >&2
    echo "Install a CUDA build of torch, or run this on a machine with an NVIDIA GPU." >&2
    exit 2
fi

mkdir -p "$out/results"
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || true
echo "gpu.sh: writing to $out"

status=0
timeout 900 "$python" -m benchmarks --results-dir "$out/results" --report "$out/BENCHMARKS.md" \
    --gpu 2>&1 | tee "$out/gpu-benchmark.log" || status=$?
timeout 900 "$python" -m benchmarks --results-dir "$out/results" --report "$out/BENCHMARKS.md" \
    gpu_pipeline --source "$main_source" --image-size 256 --max-epochs "$main_epochs" \
    --log "$out/main.log" 2>&1 | tee "$out/gpu-pipeline.log" || status=$?

echo "gpu.sh: done (status $status); figures in $out/results, report $out/BENCHMARKS.md"
exit "$status"
