"""bf16: autocast over fp32 weights, or weights cast to bf16."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ContextManager

import torch

from cpueval.precisions.base import Precision, PrecisionConfig



class Bf16Weights(StrEnum):
    autocast = "autocast"
    cast = "cast"

EMULATED = "bf16 is emulated on this CPU (no AVX512-BF16/AMX-BF16): expect it slower than fp32"


@dataclass
class Bf16Config(PrecisionConfig):
    _target_: str = "cpueval.precisions.bf16.Bf16Precision"
    name: str = "bf16"
    # autocast: fp32 weights, matmuls run in bf16 under torch.autocast (softmax/layernorm stay fp32).
    # cast: model.to(bfloat16), everything in bf16 (half the weight memory, less accurate).
    weights: Bf16Weights = Bf16Weights.autocast


SCHEMA = Bf16Config


class Bf16Precision(Precision):
    native_with = ("avx512_bf16", "amx_bf16")
    emulated_note = EMULATED
    order = 10

    def convert(self, model: torch.nn.Module, calibration: Any = None) -> torch.nn.Module:
        return model.to(torch.bfloat16) if self.config.weights == "cast" else model

    def autocast(self) -> ContextManager:
        if self.config.weights == "cast":
            return contextlib.nullcontext()  # inputs are token ids: nothing to cast
        # No weight-cast cache: each weight is used once per forward, and a cache would be baked
        # into a JIT trace as a constant (IPEX/HF recommend cache_enabled=False for tracing).
        return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.bfloat16
