"""int8: dynamic quantization of the Linear layers (int8 weights, activations quantized per call).

Three backends, each with the modes it works with here (measured with jobs/bench_modes_micro.py):
  ao_dynamic:  torch.ao.quantization.quantize_dynamic (fbgemm/x86 quantized linear kernels).
  torchao:     torchao.quantization.quantize_ with Int8DynamicActivationInt8WeightConfig
               (tensor subclasses, meant to be compiled: inductor fuses quantize + int8 GEMM).
  pt2e_static: static (calibrated) int8 through torchao's PT2E flow and the X86 Inductor quantizer,
               lowered by mode=compile (cpueval/precisions/_pt2e.py).

Weights are quantized per output channel by default. Per-tensor weight scales (the old torch.ao default)
cost ~5 F1 on minilm-squad (SQuAD v1.1 dev, 1000 questions): the FFN output projections
(encoder.layer.N.output.dense) of layers 0-3 hold a few weights of 3.5-7.9 while most rows peak near 0.2,
so one scale per tensor leaves most rows with fewer than 8 quantization levels (20-40% weight error;
per channel: ~2%). skip_modules leaves chosen Linear layers in fp32.
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Optional, Sequence

import torch

from cpueval.calibration import CalibrationConfig
from cpueval.environment import Capabilities
from cpueval.errors import UserError
from cpueval.int8_search import Forward, SearchConfig, check_target
from cpueval.plugins import Plugin, Requirement
from cpueval.precisions.base import Precision, PrecisionConfig

# backend -> {mode: why it is refused}; a backend's modes absent here are allowed.
REFUSED_MODES: dict[str, dict[str, str]] = {
    "ao_dynamic": {},
    "torchao": {
        "eager": "torchao int8 without torch.compile runs its quantize/int8-matmul ops unfused, slower than "
                 "fp32 eager here; use mode=compile (or backend=ao_dynamic for eager)",
        "jit": "torch.jit.trace cannot trace torchao tensor subclasses (internal assert in the tracer); "
               "use mode=compile (or backend=ao_dynamic for jit)",
    },
    "pt2e_static": {},
}
# Backends that only run under mode=compile (others: refused with the reason).
COMPILE_ONLY = {
    "torchao": "torchao int8 tensor subclasses run only under mode=compile here",
    "pt2e_static": "PT2E's quantize/dequantize pairs become int8 kernels only when torch.compile lowers them: "
                   "use mode=compile",
}
TORCHAO = Requirement("torchao", "torchao", "pip install 'cpueval[int8]' (torchao>=0.12)")


class Int8Backend(StrEnum):
    ao_dynamic = "ao_dynamic"
    torchao = "torchao"
    pt2e_static = "pt2e_static"


class WeightScales(StrEnum):
    per_channel = "per_channel"
    per_tensor = "per_tensor"


NOT_NATIVE = "int8 is not native on this CPU (no VNNI/AMX-INT8): quantized matmuls may be slower than fp32"
AO_DEPRECATED = (
    "int8 backend ao_dynamic uses torch.ao.quantization.quantize_dynamic, which torch deprecates in favour of "
    "torchao (still works in torch {torch_version}); backend=torchao is its successor (mode=compile)"
)


@dataclass
class Int8Config(PrecisionConfig):
    _target_: str = "cpueval.precisions.int8.Int8Precision"
    name: str = "int8"
    # ao_dynamic: torch.ao quantize_dynamic (eager, jit, compile). torchao: torchao int8 dynamic (compile only).
    backend: Int8Backend = Int8Backend.ao_dynamic
    # per_channel: one scale per output channel (row). per_tensor: one per weight (ao_dynamic only).
    weights: WeightScales = WeightScales.per_channel
    # Linear layers left in fp32: fnmatch patterns on qualified names (e.g. qa_outputs, "*.output.dense").
    skip_modules: list[str] = field(default_factory=list)
    # Calibration data, for the static int8 a mode may run (e.g. mode=openvino: NNCF). See cpueval/calibration.py.
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    # Keep at least this share of fp32's headline metric (0.99: MLPerf's 99% gate) by leaving the most
    # sensitive Linear layers in fp32, found by a search (cpueval/int8_search.py). null: no search.
    accuracy_target: Optional[float] = None
    search: SearchConfig = field(default_factory=SearchConfig)


SCHEMA = Int8Config


class Int8Precision(Precision):
    native_with = ("avx512_vnni", "avx_vnni", "amx_int8")
    emulated_note = NOT_NATIVE
    order = 20

    def __init__(self, config: Int8Config):
        super().__init__(config)
        if config.backend != "ao_dynamic" and config.weights != "per_channel":
            raise UserError(f"precision.weights=per_tensor needs backend=ao_dynamic: backend={config.backend} "
                            f"quantizes weights per channel")
        check_target(config.accuracy_target)
        self._details: dict = {}
        self._reduce_range = True  # pt2e_static: 7-bit activations unless check() finds VNNI/AMX

    def requirements(self) -> tuple[Requirement, ...]:
        return (TORCHAO,) if self.config.backend != "ao_dynamic" else ()

    def refusal(self, other: Plugin) -> Optional[str]:
        if other.group != "mode" or other.implements(self):  # a runtime mode quantizes with its own tools
            return None
        backend = self.config.backend
        why = REFUSED_MODES[backend].get(other.name)
        if why is None and backend in COMPILE_ONLY and other.name != "compile":
            why = COMPILE_ONLY[backend]
        return f"backend={backend}: {why}" if why else None

    def needs_calibration(self, mode: Any) -> bool:
        """pt2e_static calibrates activation ranges; the accuracy-aware search ranks layers on them."""
        return self.config.accuracy_target is not None or self.config.backend == "pt2e_static"

    def layer_quantizer(self, model: torch.nn.Module, calibration: Optional[Sequence[Any]] = None) -> "TorchLayers":
        return TorchLayers(model, self, calibration)

    def check(self, caps: Capabilities, mode: Any) -> None:
        if self.config.backend == "ao_dynamic" and not mode.implements(self):
            self.warn(AO_DEPRECATED.format(torch_version=torch.__version__))
        self._reduce_range = not self.is_native(caps)

    def convert(self, model: torch.nn.Module, calibration: Optional[Sequence[Any]] = None) -> torch.nn.Module:
        linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        patterns = list(self.config.skip_modules)
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in linears)]
        if unmatched:
            raise UserError(f"precision.skip_modules: {unmatched} match no Linear layer of the model "
                            f"(fnmatch on qualified names, e.g. {linears[-1] if linears else 'qa_outputs'!r})")
        skipped = [n for n in linears if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        chosen = [n for n in linears if n not in skipped]
        self._details = {"backend": self.config.backend, "weights": self.config.weights,
                         "activations": "per_token" if self.config.backend == "torchao" else "per_tensor",
                         "quantized_linear": len(chosen), "fp32_linear": skipped}
        if self.config.backend == "pt2e_static":
            from cpueval.precisions import _pt2e

            method = str(self.config.calibration.method)
            self._details.update(activations=f"per_tensor uint8, calibrated ({method})", reduce_range=self._reduce_range,
                                 calibration_batches=len(calibration or []), quantizer="X86InductorQuantizer")
            return _pt2e.quantize(model, calibration or [], skipped, method, self._reduce_range)
        if self.config.backend == "torchao":
            quantize_, int8_config = _import_torchao()
            keep = set(chosen)
            quantize_(model, int8_config(), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn in keep)
            return model
        qconfig = (torch.ao.quantization.per_channel_dynamic_qconfig if self.config.weights == "per_channel"
                   else torch.ao.quantization.default_dynamic_qconfig)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice, once per layer: check() records it
            # Keyed by name: exactly the chosen Linear layers (a name's qconfig also reaches its children).
            return torch.ao.quantization.quantize_dynamic(model, {n: qconfig for n in chosen}, inplace=True)

    def details(self) -> dict:
        return dict(self._details)


class TorchLayers:
    """The int8 search's view of this precision (cpueval.int8_search.LayerQuantizer): each quantize()
    converts a copy of the fp32 model and runs it eagerly."""

    def __init__(self, model: torch.nn.Module, precision: Int8Precision, calibration: Optional[Sequence[Any]]):
        self.model, self.config, self.calibration = model, precision.config, calibration
        self.reduce_range = precision._reduce_range

    def candidates(self) -> list[str]:
        patterns = self.config.skip_modules
        return [n for n, m in self.model.named_modules()
                if isinstance(m, torch.nn.Linear) and not any(fnmatch.fnmatchcase(n, p) for p in patterns)]

    def quantize(self, fp32_layers: Any) -> Forward:
        config = replace(self.config, skip_modules=[*self.config.skip_modules, *fp32_layers], accuracy_target=None)
        trial = Int8Precision(config)
        trial._reduce_range = self.reduce_range
        quantized = trial.convert(copy.deepcopy(self.model), self.calibration)

        def forward(inputs: Any) -> dict[str, torch.Tensor]:
            with torch.inference_mode():
                outputs = quantized(**inputs)
            return {k: v.float() for k, v in outputs.items() if isinstance(v, torch.Tensor)}

        return forward

    def identity(self) -> dict[str, Any]:
        return {"backend": str(self.config.backend), "weights": str(self.config.weights),
                "skip_modules": list(self.config.skip_modules), "execution": "eager", "torch": torch.__version__}


def _import_torchao():
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    return quantize_, Int8DynamicActivationInt8WeightConfig
