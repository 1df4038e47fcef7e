"""OpenVINO: the model converted with openvino.convert_model (dynamic batch and sequence), cached by
content as IR (model.xml/.bin, fp32 weights), compiled for the CPU plugin with the performance hint,
runtime.intra_op_threads threads and an explicit inference precision.

All three precisions are done with OpenVINO's own tools (Mode.own_precisions):
  fp32: INFERENCE_PRECISION_HINT=f32. Set explicitly: on CPUs with bf16 hardware OpenVINO's default is bf16.
  bf16: INFERENCE_PRECISION_HINT=bf16, where OpenVINO's CPU plugin runs bf16 (it lists BF16 in the CPU's
        OPTIMIZATION_CAPABILITIES: AVX512-BF16 or AMX). Elsewhere refused: the plugin then silently
        compiles a bf16 hint as f32 (seen on an AVX2-only EPYC), so the job would be fp32 labelled bf16.
  int8: NNCF post-training quantization (cpueval/modes/_nncf_int8.py), calibrated on ctx.calibration.
The precision that actually ran is read back from the compiled model and recorded; a mismatch with
the request fails the job. Conversion, quantization and compilation count as preparation.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import torch

from cpueval.environment import Capabilities
from cpueval.errors import Refused, UserError
from cpueval.modes import _runtime_cache as cache
from cpueval.modes._common import Built, GuardedMode
from cpueval.modes.base import Inputs, ModeConfig, PrepareContext, PreparedModel
from cpueval.plugins import Requirement
from cpueval.precisions.base import Precision

INSTALL = "pip install 'cpueval[openvino]'"
OPENVINO = Requirement("openvino", "openvino", INSTALL)
NNCF = Requirement("nncf", "nncf", INSTALL)
HINTS = ("LATENCY", "THROUGHPUT")
PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: what is not quantized runs f32
BF16_REFUSED = ("OpenVINO's CPU plugin has no bf16 on this CPU (no BF16 in its OPTIMIZATION_CAPABILITIES: needs "
                "AVX512-BF16 or AMX) and would silently run a bf16 hint as f32; use precision=fp32")
MODEL_FILE = "model.xml"
MATMUL_LAYERS = ("FullyConnected", "MatMul", "ScaledDotProductAttention")  # where the time goes


@dataclass
class OpenVinoConfig(ModeConfig):
    _target_: str = "cpueval.modes.openvino.OpenVinoMode"
    name: str = "openvino"
    # PERFORMANCE_HINT: LATENCY (one stream, all threads on each batch) or THROUGHPUT (several streams).
    performance_hint: str = "LATENCY"


SCHEMA = OpenVinoConfig


class OpenVinoMode(GuardedMode):
    requires = (OPENVINO,)
    own_precisions = ("fp32", "bf16", "int8")
    warmup_calls = 1  # the first run of each shape builds the plugin's kernels for it
    order = 50

    def __init__(self, config: OpenVinoConfig):
        super().__init__(config)
        if config.performance_hint not in HINTS:
            raise UserError(f"mode.performance_hint={config.performance_hint!r} is not one of {', '.join(HINTS)}")

    def needs_calibration(self, precision: Precision) -> bool:
        """int8 is NNCF post-training quantization: it calibrates on ctx.calibration (precision.calibration)."""
        return precision.name == "int8"

    def check(self, caps: Capabilities, precision: Precision) -> None:
        if not self.implements(precision):
            raise Refused(f"mode={self.name} runs only precision fp32, bf16 or int8 (done with OpenVINO's own "
                          f"tools), not {precision.name}")
        if precision.name == "bf16" and "BF16" not in cpu_capabilities():
            raise Refused(f"mode={self.name} precision=bf16: {BF16_REFUSED}")
        if precision.name == "int8":
            if not NNCF.present():
                raise Refused(f"mode={self.name} precision=int8 needs the package nncf, which is not installed: {INSTALL}")
            backend = getattr(precision.config, "backend", "ao_dynamic")
            if backend != "ao_dynamic":
                self.warn(f"precision.backend={backend} is a PyTorch int8 backend: mode={self.name} ignores it and "
                          f"quantizes with NNCF")

    def prepare(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> PreparedModel:
        if self.needs_calibration(precision) and not ctx.calibration:
            raise UserError(_no_calibration(self.name))
        return super().prepare(model, precision, ctx)

    def layer_quantizer(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> Any:
        """precision.accuracy_target's search over NNCF int8: layers stay fp32 through NNCF's IgnoredScope."""
        if precision.name != "int8":
            return None
        import openvino

        from cpueval.modes._nncf_int8 import NncfLayers

        core, converted = openvino.Core(), _convert_cached(model, ctx)
        properties = self._properties(precision, ctx)
        return NncfLayers(converted, core.read_model(converted.path / MODEL_FILE), precision, ctx,
                          open_model=lambda ov_model: _caller(core.compile_model(ov_model, "CPU", properties)))

    def build(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> Built:
        import openvino

        core = openvino.Core()
        entries = {"convert": _convert_cached(model, ctx)}
        precision_details = None
        try:
            ov_model = core.read_model(entries["convert"].path / MODEL_FILE)
            if precision.name == "int8":
                from cpueval.modes._nncf_int8 import quantize_cached

                entries["quantize"], precision_details = quantize_cached(ov_model, entries["convert"], precision, ctx)
                ov_model = core.read_model(entries["quantize"].path / MODEL_FILE)
            compiled = core.compile_model(ov_model, "CPU", self._properties(precision, ctx))
            steps = {step: entry.details() for step, entry in entries.items()}
        finally:
            for entry in entries.values():
                entry.cleanup()  # the compiled model holds (or maps) the weights
        executed = executed_precision(compiled)
        _require_executed(precision.name, executed)
        if precision_details is not None:
            precision_details["int8_layers_executed"] = executed["int8_layers"]
        details = {"runtime": "openvino", "openvino": openvino.__version__, "device": "CPU",
                   "performance_hint": self.config.performance_hint, "intra_op_threads": ctx.intra_op_threads,
                   "num_streams": int(compiled.get_property("NUM_STREAMS")), **executed, **steps}
        return Built(call=_caller(compiled), details=details, precision_details=precision_details)

    def _properties(self, precision: Precision, ctx: PrepareContext) -> dict[str, Any]:
        return {"PERFORMANCE_HINT": self.config.performance_hint, "INFERENCE_NUM_THREADS": ctx.intra_op_threads,
                "INFERENCE_PRECISION_HINT": PRECISION_HINT[precision.name]}


def _no_calibration(mode: str) -> str:
    return (f"mode={mode} precision=int8 is NNCF post-training quantization, which needs calibration batches: "
            f"set precision.calibration (the samples to calibrate on)")


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says it can run here (FP32, BF16, INT8, ...)."""
    import openvino

    return [str(c) for c in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]




# -- conversion ------------------------------------------------------------------------------------------
def _convert_cached(model: torch.nn.Module, ctx: PrepareContext) -> cache.CacheEntry:
    import openvino

    material = {
        "what": "openvino.convert_model", "model": cache.model_identity(model, ctx.model_sha256),
        "inputs": {name: [str(t.dtype), t.dim()] for name, t in sorted(ctx.example.items())},
        "dynamic_axes": ["batch", "sequence"], "weights": "f32",
        "versions": {"torch": torch.__version__, "openvino": openvino.__version__},
    }
    return cache.cached_entry(ctx.cache_dir, "openvino", material,
                              lambda directory: convert(model, ctx.example, directory / MODEL_FILE))


def convert(model: torch.nn.Module, example: Inputs, path: Any) -> None:
    """openvino.convert_model from the torch module (traced on `example`), inputs made dynamic in batch
    and sequence, saved as IR with fp32 weights (save_model would compress them to fp16 by default)."""
    import openvino

    with cache.quiet("openvino", "torch"):  # tracer warnings about python conditions on shapes
        ov_model = openvino.convert_model(model, example_input=dict(example))
    dynamic = {i.get_any_name(): openvino.PartialShape([-1] * i.get_partial_shape().rank.get_length())
               for i in ov_model.inputs}
    ov_model.reshape(dynamic)
    openvino.save_model(ov_model, str(path), compress_to_fp16=False)


# -- what ran ----------------------------------------------------------------------------------------------
def executed_precision(compiled: Any) -> dict[str, Any]:
    """The inference precision the compiled model reports, and per matmul-like layer type the precisions
    its runtime graph really executes (e.g. FullyConnected: {"u8": 7, "i8": 6} after NNCF)."""
    layers: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        if layer in MATMUL_LAYERS and "runtimePrecision" in info:
            layers[layer][info["runtimePrecision"].astype(str)] += 1
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    int8 = sum(n for counts in layers.values() for p, n in counts.items() if p in ("i8", "u8"))
    return {"inference_precision": hint.to_string() if hasattr(hint, "to_string") else str(hint),
            "executed_precisions": {k: dict(v) for k, v in sorted(layers.items())}, "int8_layers": int8}


def _require_executed(precision: str, executed: dict[str, Any]) -> None:
    """No silent precision change: what the compiled model runs must be what was asked for."""
    ran = executed["inference_precision"]
    if precision == "bf16" and ran != "bf16":
        raise RuntimeError(f"OpenVINO compiled the bf16 request as {ran} (this CPU plugin has no bf16 path here)")
    if precision != "bf16" and ran != "f32":
        raise RuntimeError(f"OpenVINO compiled the f32 request as {ran}")
    if precision == "int8" and executed["int8_layers"] == 0:
        raise RuntimeError("OpenVINO runs no layer in int8 after NNCF quantization")


def _caller(compiled: Any):
    """The forward call: torch inputs by input name, float32 torch outputs by the torch model's names."""
    request = compiled.create_infer_request()
    input_names = [i.get_any_name() for i in compiled.inputs]
    outputs = list(compiled.outputs)
    names = [o.get_any_name() for o in outputs]

    def call(inputs: Inputs) -> dict[str, torch.Tensor]:
        # share_outputs=False: copies, so the next call cannot overwrite what the loop kept.
        result = request.infer(cache.to_numpy_inputs(inputs, input_names), share_inputs=True, share_outputs=False)
        return cache.to_torch_outputs([result[o] for o in outputs], names)

    return call
