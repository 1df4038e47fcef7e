"""int8: dynamic quantization of the Linear layers (int8 weights, activations quantized per call).

Two backends, each with the modes it works with here (measured with jobs/bench_modes_micro.py):
  ao_dynamic: torch.ao.quantization.quantize_dynamic (fbgemm/x86 quantized linear kernels).
  torchao:    torchao.quantization.quantize_ with Int8DynamicActivationInt8WeightConfig
              (tensor subclasses, meant to be compiled: inductor fuses quantize + int8 GEMM).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from cpueval.environment import Capabilities
from cpueval.errors import Refused
from cpueval.precisions._common import refuse, require_choice
from cpueval.precisions.base import Precision, PrecisionConfig

# backend -> {mode: why it is refused}; modes absent here are allowed.
REFUSED_MODES: dict[str, dict[str, str]] = {
    "ao_dynamic": {
        "ipex": "IPEX's int8 path needs its own static calibration flow, not built here; use mode=eager, jit or compile",
        "ipex_jit": "IPEX's int8 path needs its own static calibration flow, not built here; use mode=eager, jit or compile",
    },
    "torchao": {
        "eager": "torchao int8 without torch.compile runs its quantize/int8-matmul ops unfused, slower than "
                 "fp32 eager here; use mode=compile (or backend=ao_dynamic for eager)",
        "jit": "torch.jit.trace cannot trace torchao tensor subclasses (internal assert in the tracer); "
               "use mode=compile (or backend=ao_dynamic for jit)",
        "ipex": "torchao tensor subclasses do not run under IPEX; use mode=compile",
        "ipex_jit": "torchao tensor subclasses do not run under IPEX; use mode=compile",
    },
}
BACKENDS = tuple(REFUSED_MODES)
NOT_NATIVE = "int8 is not native on this CPU (no VNNI/AMX-INT8): quantized matmuls may be slower than fp32"
AO_DEPRECATED = (
    "int8 backend ao_dynamic uses torch.ao.quantization.quantize_dynamic, which torch deprecates in favour of "
    f"torchao (still works in torch {torch.__version__}); backend=torchao is its successor (mode=compile)"
)


@dataclass
class Int8Config(PrecisionConfig):
    _target_: str = "cpueval.precisions.int8.Int8Precision"
    name: str = "int8"
    # ao_dynamic: torch.ao quantize_dynamic (eager, jit, compile). torchao: torchao int8 dynamic (compile only).
    backend: str = "ao_dynamic"


SCHEMA = Int8Config


class Int8Precision(Precision):
    def __init__(self, config: Int8Config):
        super().__init__(config)
        require_choice("precision.backend", config.backend, BACKENDS)

    def check(self, caps: Capabilities, mode_name: str) -> None:
        why = REFUSED_MODES[self.config.backend].get(mode_name)
        if why:
            raise refuse(f"{self.name} (backend={self.config.backend})", mode_name, why)
        if self.config.backend == "torchao":
            _import_torchao()  # refuse now rather than after loading the model
        self._warn(not caps.native_int8, NOT_NATIVE)
        self._warn(self.config.backend == "ao_dynamic", AO_DEPRECATED)

    def _warn(self, condition: bool, message: str) -> None:
        if condition and message not in self.warnings:
            self.warnings.append(message)

    def convert(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.config.backend == "torchao":
            quantize_, int8_config = _import_torchao()
            quantize_(model, int8_config())
            return model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the deprecation notice, once per layer: check() records it
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


def _import_torchao():
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as e:
        raise Refused(f"precision=int8 backend=torchao needs torchao>=0.12 (pip install 'cpueval[int8]'): {e}") from e
    return quantize_, Int8DynamicActivationInt8WeightConfig
