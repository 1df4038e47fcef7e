"""Eager PyTorch: the model as loaded (and converted by its precision). The reference mode."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cpueval.modes._common import Built, GuardedMode
from cpueval.modes.base import ModeConfig, PrepareContext
from cpueval.precisions.base import Precision


@dataclass
class EagerConfig(ModeConfig):
    _target_: str = "cpueval.modes.eager.EagerMode"
    name: str = "eager"


SCHEMA = EagerConfig


class EagerMode(GuardedMode):
    order = 0  # the reference: first in listings and reports

    def build(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> Built:
        return Built(call=lambda inputs: model(**inputs))
