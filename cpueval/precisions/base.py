"""The precision interface.

A precision converts the loaded fp32 eager model (weights: cast, quantize) and may wrap each
forward call in a context (autocast). Adding one means one module here plus one yaml in conf/precision/.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch
from omegaconf import MISSING

from cpueval.environment import Capabilities


@dataclass
class PrecisionConfig:
    _target_: str = MISSING
    name: str = MISSING


class Precision:
    def __init__(self, config: PrecisionConfig):
        self.config = config
        # Facts the user must see (e.g. "bf16 is emulated on this CPU"), recorded in results.json.
        self.warnings: list[str] = []

    @property
    def name(self) -> str:
        return self.config.name

    def check(self, caps: Capabilities, mode_name: str) -> None:
        """Raise cpueval.errors.Refused if this precision cannot run with this mode on this CPU;
        append to self.warnings if it runs but only emulated."""

    def convert(self, model: torch.nn.Module) -> torch.nn.Module:
        """Return the model with this precision's weights (cast or quantized)."""
        return model

    def autocast(self) -> ContextManager:
        """Context every forward call runs in."""
        return contextlib.nullcontext()

    def details(self) -> dict:
        """What convert() did (e.g. which layers it quantized), recorded as actual.precision_details."""
        return {}

    @property
    def compute_dtype(self) -> torch.dtype:
        return torch.float32
