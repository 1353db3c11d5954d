"""The network outside PyTorch: its ONNX export (`onnx_export`); the check that ONNX Runtime
gives PyTorch's answer lives with the runtime (`pipeline/serving/parity.py`). The opset settings
live here, so `pipeline.params` can name them without importing torch."""

from __future__ import annotations

from pipeline.errors import PipelineError

# torch 2.13's exporter writes opset 20 natively; others are converted from it, and ONNX
# Runtime 1.32 runs up to 23.
DEFAULT_OPSET = 20
OPSETS = range(18, 24)


def check_opset(opset: int) -> None:
    if opset not in OPSETS:
        raise PipelineError(
            f"parameter opset={opset} is not one this exporter writes: use "
            f"{OPSETS.start} to {OPSETS.stop - 1} (default {DEFAULT_OPSET})"
        )
