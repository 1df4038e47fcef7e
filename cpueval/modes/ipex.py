"""IPEX eager: ipex.optimize(model) (oneDNN prepacked linear weights, fused ops), no graph capture."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cpueval.environment import Capabilities
from cpueval.modes._common import Built, GuardedMode
from cpueval.modes._ipex import IPEX_INT8_REFUSED, IPEX_REQUIREMENT, IpexOptions, check_ipex, ipex_optimize
from cpueval.modes.base import PrepareContext
from cpueval.precisions.base import Precision


@dataclass
class IpexConfig(IpexOptions):
    _target_: str = "cpueval.modes.ipex.IpexMode"
    name: str = "ipex"


SCHEMA = IpexConfig


class IpexMode(GuardedMode):
    requires = (IPEX_REQUIREMENT,)
    refuses = {"int8": IPEX_INT8_REFUSED}
    order = 30

    def check(self, caps: Capabilities, precision: Precision) -> None:
        check_ipex(self.name, caps, precision)

    def build(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> Built:
        optimized, details = ipex_optimize(model, precision, self.config, self.name)
        return Built(call=lambda inputs: optimized(**inputs), details=details)
