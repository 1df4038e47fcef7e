"""TorchScript trace + freeze, shared by mode=jit and mode=ipex_jit (as the HF Trainer's jit eval did)."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from cpueval.modes._common import Built, ShapeTracker
from cpueval.modes.base import Inputs
from cpueval.precisions.base import Precision


def trace_and_freeze(
    model: torch.nn.Module, precision: Precision, example: Inputs, optimize_for_inference: bool
) -> Built:
    """Trace `model` on `example` under the precision's autocast, then freeze (weights become
    constants, enabling the fusions). Traced models return a dict of tensors."""
    with torch.no_grad(), precision.autocast(), warnings.catch_warnings():
        # TracerWarnings about python ints are expected for HF models and only say the traced
        # graph may be shape-specific; the parity tests check other lengths instead.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example_kwarg_inputs=dict(example), strict=False, check_trace=False)
        frozen = torch.jit.freeze(traced.eval())
        if optimize_for_inference:
            frozen = torch.jit.optimize_for_inference(frozen)
    traced_shape = list(next(iter(example.values())).shape)

    def stats(tracker: ShapeTracker) -> dict[str, Any]:
        others = [list(s) for s in tracker.counts if list(s) != traced_shape]
        return {"traced_shape": traced_shape, "untraced_shapes_ran": bool(others), "untraced_shapes": len(others)}

    return Built(
        call=lambda inputs: frozen(**inputs),
        details={"traced_shape": traced_shape, "optimize_for_inference": optimize_for_inference},
        stats=stats,
    )
