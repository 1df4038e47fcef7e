"""IPEX + TorchScript: ipex.optimize, then trace + freeze (what the HF Trainer's --jit_mode_eval did
with --use_ipex); IPEX registers its fusion passes with the TorchScript graph executor."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cpueval.environment import Capabilities
from cpueval.modes._common import Built, GuardedMode
from cpueval.modes._ipex import IPEX_INT8_REFUSED, IPEX_REQUIREMENT, IpexOptions, check_ipex, ipex_optimize
from cpueval.modes._trace import trace_and_freeze
from cpueval.modes.base import PrepareContext
from cpueval.precisions.base import Precision


@dataclass
class IpexJitConfig(IpexOptions):
    _target_: str = "cpueval.modes.ipex_jit.IpexJitMode"
    name: str = "ipex_jit"
    optimize_for_inference: bool = False


SCHEMA = IpexJitConfig


class IpexJitMode(GuardedMode):
    # IPEX's fusions are applied by the profiling executor during the first runs.
    warmup_calls = 2
    requires = (IPEX_REQUIREMENT,)
    refuses = {"int8": IPEX_INT8_REFUSED}
    order = 40

    def check(self, caps: Capabilities, precision: Precision) -> None:
        check_ipex(self.name, caps, precision)

    def build(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> Built:
        optimized, details = ipex_optimize(model, precision, self.config, self.name)
        built = trace_and_freeze(optimized, precision, ctx.example, self.config.optimize_for_inference)
        built.details.update(details)
        return built
