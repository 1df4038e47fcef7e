"""TorchScript: torch.jit.trace (kwarg example, strict=False for dict outputs) + torch.jit.freeze."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cpueval.modes._common import Built, GuardedMode
from cpueval.modes._trace import trace_and_freeze
from cpueval.modes.base import ModeConfig, PrepareContext
from cpueval.precisions.base import Precision


@dataclass
class JitConfig(ModeConfig):
    _target_: str = "cpueval.modes.jit.JitMode"
    name: str = "jit"
    # Also run torch.jit.optimize_for_inference (folds more, may pick MKLDNN kernels).
    optimize_for_inference: bool = False


SCHEMA = JitConfig


class JitMode(GuardedMode):
    # The profiling executor specializes the graph on its first two runs: keep them out of the loop.
    warmup_calls = 2
    order = 10

    def build(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> Built:
        return trace_and_freeze(model, precision, ctx.example, self.config.optimize_for_inference)
