"""The precision interface.

A precision converts the loaded fp32 eager model (weights: cast, quantize) and may wrap each
forward call in a context (autocast). Adding one means one module plus one yaml in a config dir's
precision/ folder; see cpueval/plugins.py for the declarations every plug-in makes. A mode that
implements a precision itself (`Mode.own_precisions`) gets the fp32 model instead, and this
class's convert/autocast are not used.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, ContextManager, Optional, Sequence

import torch
from omegaconf import MISSING

from cpueval.environment import Capabilities
from cpueval.plugins import Plugin

if TYPE_CHECKING:
    from cpueval.modes.base import Mode


@dataclass
class PrecisionConfig:
    _target_: str = MISSING
    name: str = MISSING


class Precision(Plugin):
    group = "precision"
    order: ClassVar[int] = 100

    def check(self, caps: Capabilities, mode: "Mode") -> None:
        """Raise cpueval.errors.Refused if this precision cannot run with this mode on this CPU;
        call self.warn() for facts the user must see."""

    def needs_calibration(self, mode: "Mode") -> bool:
        """Whether convert() needs calibration batches with this mode (static quantization)."""
        return False

    def layer_quantizer(self, model: torch.nn.Module, calibration: Optional[Sequence[Any]] = None) -> Any:
        """For precision.accuracy_target's search: a cpueval.int8_search.LayerQuantizer over `model`
        (the fp32 model), or None when this precision cannot leave chosen layers unconverted."""
        return None

    def convert(self, model: torch.nn.Module, calibration: Optional[Sequence[Any]] = None) -> torch.nn.Module:
        """Return the model with this precision's weights (cast or quantized); `calibration`: the
        calibration batches when needs_calibration() asked for them."""
        return model

    def autocast(self) -> ContextManager:
        """Context every forward call runs in."""
        return contextlib.nullcontext()

    def details(self) -> dict[str, Any]:
        """What convert() did (e.g. which layers it quantized), recorded as actual.precision_details."""
        return {}

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.float32
