"""ONNX Runtime: the model exported with torch.onnx.export (dynamo exporter, dynamic batch and sequence
axes), cached by content, run by an InferenceSession on the CPU execution provider.

fp32 and int8 are done with ONNX Runtime's own tools (Mode.own_precisions): int8 is
`quantize_dynamic` (default) or `quantize_static` (QDQ, calibrated on ctx.calibration) of the Linear
layers' MatMuls, see cpueval/modes/_onnx_int8.py. bf16 is refused: the CPU provider has no bf16
kernels that beat fp32. Export, quantization, session creation and the warm-up call all count as
preparation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from cpueval.environment import Capabilities
from cpueval.errors import Refused, UserError
from cpueval.modes import _runtime_cache as cache
from cpueval.modes._common import Built, GuardedMode
from cpueval.modes.base import Inputs, ModeConfig, PrepareContext, PreparedModel
from cpueval.plugins import Requirement
from cpueval.precisions.base import Precision

INSTALL = "pip install 'cpueval[onnx]'"
REQUIREMENTS = (
    Requirement("onnxruntime", "onnxruntime", INSTALL),
    Requirement("onnx", "onnx", INSTALL),
    Requirement("onnxscript", "onnxscript", INSTALL),  # the dynamo exporter's op library
)
BF16_REFUSED = "ONNX Runtime's CPU provider has no bf16 kernels faster than fp32; use precision=fp32 or int8"
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}
INT8_METHODS = ("dynamic", "static")
MODEL_FILE = "model.onnx"


@dataclass
class OnnxRuntimeConfig(ModeConfig):
    _target_: str = "cpueval.modes.onnxruntime.OnnxRuntimeMode"
    name: str = "onnxruntime"
    # SessionOptions.graph_optimization_level: disable, basic, extended, all.
    graph_optimization_level: str = "all"
    # ONNX opset of the export; null: the exporter's default (recorded in actual.details.opset).
    opset: Optional[int] = None
    # precision=int8: dynamic (quantize_dynamic: activations quantized per call) or static (quantize_static,
    # QDQ, activation scales calibrated beforehand on precision.calibration's batches).
    int8: str = "dynamic"
    # int8=static: symmetric activation ranges (zero point 0); asymmetric measured far better on minilm-squad.
    activation_symmetric: bool = False


SCHEMA = OnnxRuntimeConfig


def _choice(field: str, value: str, choices: Any) -> None:
    if value not in choices:
        raise UserError(f"mode.{field}={value!r} is not one of {', '.join(choices)}")


class OnnxRuntimeMode(GuardedMode):
    requires = REQUIREMENTS
    refuses = {"bf16": BF16_REFUSED}
    own_precisions = ("fp32", "int8")
    warmup_calls = 1  # the first run of each shape allocates ORT's buffers
    order = 40

    def __init__(self, config: OnnxRuntimeConfig):
        super().__init__(config)
        _choice("graph_optimization_level", config.graph_optimization_level, OPT_LEVELS)
        _choice("int8", config.int8, INT8_METHODS)

    def needs_calibration(self, precision: Precision) -> bool:
        """Static int8 calibrates activation ranges on ctx.calibration (filled from precision.calibration)."""
        return precision.name == "int8" and self.config.int8 == "static"

    def check(self, caps: Capabilities, precision: Precision) -> None:
        if not self.implements(precision):
            raise Refused(f"mode={self.name} runs only precision fp32 or int8 (done with ONNX Runtime's own tools), "
                          f"not {precision.name}")
        backend = getattr(precision.config, "backend", "ao_dynamic")
        if precision.name == "int8" and backend != "ao_dynamic":
            self.warn(f"precision.backend={backend} is a PyTorch int8 backend: mode={self.name} ignores it and "
                      f"quantizes with ONNX Runtime (mode.int8={self.config.int8})")

    def prepare(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> PreparedModel:
        if self.needs_calibration(precision) and not ctx.calibration:
            raise UserError(f"mode={self.name} mode.int8=static needs calibration batches: set precision.calibration "
                            f"(or use mode.int8=dynamic)")
        return super().prepare(model, precision, ctx)

    def layer_quantizer(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> Any:
        """precision.accuracy_target's search over ONNX Runtime int8: layers stay fp32 as excluded nodes."""
        if precision.name != "int8":
            return None
        from cpueval.modes._onnx_int8 import OnnxLayers

        level = self.config.graph_optimization_level
        return OnnxLayers(_export_cached(model, ctx, self.config.opset), precision, self.config, ctx,
                          open_model=lambda path: _caller(_session(path, level, ctx)))

    def build(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> Built:
        import onnx
        import onnxruntime

        export = _export_cached(model, ctx, self.config.opset)
        entries, precision_details = {"export": export}, None
        try:
            path = export.path / MODEL_FILE
            opset = _opset(path)
            if precision.name == "int8":
                from cpueval.modes._onnx_int8 import quantize_cached

                entries["quantize"], precision_details = quantize_cached(path, export, precision, self.config, ctx)
                path = entries["quantize"].path / MODEL_FILE
            session = _session(path, self.config.graph_optimization_level, ctx)
            steps = {step: entry.details() for step, entry in entries.items()}
        finally:
            for entry in entries.values():
                entry.cleanup()  # the session holds the model in memory
        details = {
            "runtime": "onnxruntime", "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
            "opset": opset, "graph_optimization_level": self.config.graph_optimization_level,
            "providers": session.get_providers(), "intra_op_threads": ctx.intra_op_threads,
            "inter_op_threads": ctx.inter_op_threads, **steps,
        }
        return Built(call=_caller(session), details=details, precision_details=precision_details)




# -- export --------------------------------------------------------------------------------------------
def _export_cached(model: torch.nn.Module, ctx: PrepareContext, opset: Optional[int]) -> cache.CacheEntry:
    """The fp32 ONNX export of `model`, from the cache when the same export was done before."""
    import onnx
    import onnxscript

    material = {
        "what": "torch.onnx.export(dynamo=True)", "model": cache.model_identity(model, ctx.model_sha256),
        "inputs": {name: [str(t.dtype), t.dim()] for name, t in sorted(ctx.example.items())},
        "dynamic_axes": ["batch", "sequence"], "opset": opset, "optimize": True,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__},
    }
    return cache.cached_entry(ctx.cache_dir, "onnx", material,
                              lambda directory: export_onnx(model, ctx.example, directory / MODEL_FILE, opset))


def export_onnx(model: torch.nn.Module, example: Inputs, path: Path, opset: Optional[int]) -> None:
    """torch.onnx.export with the dynamo exporter: batch and sequence axes dynamic, inputs named as the
    batch's keys, outputs named as the torch model's (start_logits, end_logits / logits)."""
    example = _export_example(example)
    names = cache.output_names(model, example)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = {name: ({0: batch, 1: sequence} if t.dim() >= 2 else {0: batch}) for name, t in example.items()}
    with cache.quiet("torch.onnx", "torch.export", "onnxscript", "onnx_ir"):
        torch.onnx.export(model, args=(), kwargs=dict(example), f=str(path), dynamo=True, dynamic_shapes=dynamic,
                          output_names=names, opset_version=opset, verbose=False, optimize=True)
    if not path.exists():
        raise RuntimeError(f"torch.onnx.export wrote no {path.name}")


def _export_example(example: Inputs) -> dict[str, torch.Tensor]:
    """torch.export specializes a dimension of size 1 (it cannot stay symbolic): give the export at
    least 2 rows and 2 positions so batch and sequence stay dynamic."""
    rows, length = next(iter(example.values())).shape[:2]
    repeats = (2 if rows < 2 else 1, 2 if length < 2 else 1)
    return {name: t.repeat(*repeats, *([1] * (t.dim() - 2))) if t.dim() >= 2 else t for name, t in example.items()}


def _opset(path: Path) -> Optional[int]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


# -- session -------------------------------------------------------------------------------------------
def _session(path: Path, level: str, ctx: PrepareContext) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, OPT_LEVELS[level])
    options.intra_op_num_threads = ctx.intra_op_threads
    if ctx.inter_op_threads:
        options.inter_op_num_threads = ctx.inter_op_threads
    options.log_severity_level = 3  # errors only: warnings about unused initializers are not the user's
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if "CPUExecutionProvider" not in session.get_providers():
        raise RuntimeError(f"ONNX Runtime did not take the CPU execution provider (got {session.get_providers()})")
    return session


def _caller(session: Any):
    """The forward call: torch inputs by the session's input names, float32 torch outputs by name."""
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]

    def call(inputs: Inputs) -> dict[str, torch.Tensor]:
        arrays = session.run(output_names, cache.to_numpy_inputs(inputs, input_names))
        return cache.to_torch_outputs(arrays, output_names)

    return call
