"""IPEX eager: ipex.optimize(model) (oneDNN prepacked linear weights, fused ops), no graph capture."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cpueval.environment import Capabilities
from cpueval.modes._common import Built, GuardedMode
from cpueval.modes._ipex import IpexOptions, check_ipex, ipex_optimize
from cpueval.modes.base import Inputs
from cpueval.precisions.base import Precision


@dataclass
class IpexConfig(IpexOptions):
    _target_: str = "cpueval.modes.ipex.IpexMode"
    name: str = "ipex"


SCHEMA = IpexConfig


class IpexMode(GuardedMode):
    def check(self, caps: Capabilities, precision: Precision) -> None:
        check_ipex(self.name, caps, precision)

    def build(self, model: torch.nn.Module, precision: Precision, example: Inputs) -> Built:
        optimized, details = ipex_optimize(model, precision, self.config, self.name)
        return Built(call=lambda inputs: optimized(**inputs), details=details)
