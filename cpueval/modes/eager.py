"""Eager PyTorch: the model as loaded (and converted by its precision). The reference mode."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cpueval.modes._common import Built, GuardedMode
from cpueval.modes.base import Inputs, ModeConfig
from cpueval.precisions.base import Precision


@dataclass
class EagerConfig(ModeConfig):
    _target_: str = "cpueval.modes.eager.EagerMode"
    name: str = "eager"


SCHEMA = EagerConfig


class EagerMode(GuardedMode):
    def build(self, model: torch.nn.Module, precision: Precision, example: Inputs) -> Built:
        return Built(call=lambda inputs: model(**inputs))
