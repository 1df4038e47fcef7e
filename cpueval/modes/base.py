"""The execution-mode interface.

A mode turns an eager model (already converted by its precision) into the callable the timed
forward loop calls. Adding a mode means one module (anywhere importable) plus one yaml in a
config dir's mode/ folder; see cpueval/plugins.py for the declarations every plug-in makes.

A mode that runs on another runtime (ONNX Runtime, OpenVINO) may implement some precisions itself
(`own_precisions`): the pipeline then hands it the fp32 model untouched (no precision.convert, no
autocast) and the mode quantizes or casts with its runtime's own tools, reporting what it did in
`Built.precision_details`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Optional, Sequence

import torch
from omegaconf import MISSING

from cpueval.environment import Capabilities
from cpueval.plugins import Plugin

if TYPE_CHECKING:
    from cpueval.precisions.base import Precision

Inputs = Mapping[str, "torch.Tensor"]
Outputs = Mapping[str, "torch.Tensor"]


@dataclass
class ModeConfig:
    """Fields every mode has. A mode's own dataclass subclasses this and sets `_target_`."""

    _target_: str = MISSING
    name: str = MISSING
    # Mode to run instead if preparing this one fails (e.g. "eager"). None: fail the job.
    fallback: Optional[str] = None


@dataclass
class PrepareContext:
    """What a mode may use to prepare, besides the model and the precision."""

    example: Inputs  # a real batch (the first of the loop): trace/export/compile example
    cache_dir: Optional[Path] = None  # runtime.cache_dir: exported/converted models are cached under it
    model_sha256: Optional[str] = None  # content identity of the weights, for cache keys
    intra_op_threads: int = 1
    inter_op_threads: Optional[int] = None
    # Batches for static (calibrated) quantization, from precision.calibration; None when none was asked for.
    calibration: Optional[Sequence[Inputs]] = None


@dataclass
class PreparedModel:
    """What the forward loop calls, plus what actually ran."""

    forward: Callable[[Inputs], Outputs]
    mode: str  # the mode that really runs (differs from the request only after a fallback)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. traced shapes, compile options
    # What the precision actually did, when the mode implemented it (own_precisions); else None.
    precision_details: Optional[dict[str, Any]] = None

    def stats(self) -> dict[str, Any]:
        """Counters gathered while running (distinct shapes, recompiles); override if tracked."""
        return {}


class Mode(Plugin):
    """Base class. Subclasses implement `prepare`; `check` refuses impossible combinations early."""

    group = "mode"
    # Precisions this mode implements with its own runtime's tools (see the module docstring).
    own_precisions: ClassVar[tuple[str, ...]] = ()
    # Report/listing order (lower first); the reference mode is 0.
    order: ClassVar[int] = 100

    def implements(self, precision: "Precision") -> bool:
        return precision.name in self.own_precisions

    def needs_calibration(self, precision: "Precision") -> bool:
        """Whether preparing with this precision needs calibration batches (static quantization)."""
        return False

    def layer_quantizer(self, model: torch.nn.Module, precision: "Precision", ctx: PrepareContext) -> Any:
        """For precision.accuracy_target's search: a cpueval.int8_search.LayerQuantizer, or None when this
        mode cannot leave chosen layers in fp32. A mode that implements the precision provides its own."""
        return None if self.implements(precision) else precision.layer_quantizer(model, ctx.calibration)

    def check(self, caps: Capabilities, precision: "Precision") -> None:
        """Raise cpueval.errors.Refused (before the model loads) if this cannot run here."""

    def prepare(self, model: torch.nn.Module, precision: "Precision", ctx: PrepareContext) -> PreparedModel:
        raise NotImplementedError
