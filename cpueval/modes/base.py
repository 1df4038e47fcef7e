"""The execution-mode interface.

A mode turns an eager model (already converted by its precision) into the callable the timed
forward loop calls. Adding a mode means one module in this package plus one yaml in conf/mode/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
from omegaconf import MISSING

from cpueval.environment import Capabilities
from cpueval.precisions.base import Precision

Inputs = Mapping[str, torch.Tensor]
Outputs = Mapping[str, torch.Tensor]


@dataclass
class ModeConfig:
    """Fields every mode has. A mode's own dataclass subclasses this and sets `_target_`."""

    _target_: str = MISSING
    name: str = MISSING
    # Mode to run instead if preparing this one fails (e.g. "eager"). None: fail the job.
    fallback: Optional[str] = None


@dataclass
class PreparedModel:
    """What the forward loop calls, plus what actually ran."""

    forward: Callable[[Inputs], Outputs]
    mode: str  # the mode that really runs (differs from the request only after a fallback)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. traced shapes, compile options

    def stats(self) -> dict[str, Any]:
        """Counters gathered while running (distinct shapes, recompiles); override if tracked."""
        return {}


class Mode:
    """Base class. Subclasses implement `prepare`; `check` refuses impossible combinations early."""

    def __init__(self, config: ModeConfig):
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    def check(self, caps: Capabilities, precision: Precision) -> None:
        """Raise cpueval.errors.Refused (before the model loads) if this cannot run here."""

    def prepare(self, model: torch.nn.Module, precision: Precision, example: Inputs) -> PreparedModel:
        raise NotImplementedError
