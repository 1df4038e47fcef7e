"""What every mode shares: the self-contained forward, shape tracking, and the fallback rule.

A mode module only says how to build its callable (`GuardedMode.build`). `GuardedMode.prepare`
wraps it: it runs the warm-up calls (so trace/compile cost lands in preparation time, not in the
timed loop), turns any failure into `ModeFailed`, and, only when `config.fallback` names another
mode, prepares that one instead and records why. This is the one place fallback happens.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

from cpueval import plugins
from cpueval.environment import detect_capabilities
from cpueval.errors import Refused, UserError
from cpueval.modes.base import Inputs, Mode, Outputs, PrepareContext, PreparedModel
from cpueval.precisions.base import Precision

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


class ModeFailed(UserError):
    """Preparing (tracing, optimizing, compiling, first call of) a mode raised and no fallback was set."""

    exit_code = 4


def to_float32(outputs: Any) -> dict[str, torch.Tensor]:
    """Model outputs (HF ModelOutput, or the dict a traced model returns) as float32 tensors by name.

    Non-tensor entries (None, tuples of hidden states) are dropped: metrics only read logits.
    """
    if not isinstance(outputs, Mapping):
        raise TypeError(f"model returned {type(outputs).__name__}, expected a mapping (load it with return_dict=True)")
    return {k: v.float() for k, v in outputs.items() if isinstance(v, torch.Tensor)}


class ShapeTracker:
    """Counts the distinct input shapes the timed loop feeds (each can mean a retrace/recompile)."""

    def __init__(self) -> None:
        self.counts: dict[Shape, int] = {}

    def record(self, inputs: Inputs) -> None:
        shape = tuple(next(iter(inputs.values())).shape)
        self.counts[shape] = self.counts.get(shape, 0) + 1

    def reset(self) -> None:
        self.counts.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "calls": sum(self.counts.values()),
            "distinct_shapes": len(self.counts),
            "shapes": [list(s) for s in sorted(self.counts)],
        }


@dataclass
class Built:
    """What a mode's `build` returns: the raw callable and what to report about it."""

    call: Callable[[Inputs], Any]
    details: dict[str, Any] = field(default_factory=dict)
    # Extra stats gathered while running, given the loop's shape tracker (e.g. recompiles).
    stats: Optional[Callable[[ShapeTracker], dict[str, Any]]] = None
    # Called once the warm-up calls are done (e.g. to snapshot compile counters).
    on_ready: Optional[Callable[[], None]] = None
    # What the mode did for a precision it implements itself (Mode.own_precisions).
    precision_details: Optional[dict[str, Any]] = None


@dataclass
class TrackedPreparedModel(PreparedModel):
    """PreparedModel whose stats() reports the loop's shapes plus the mode's own counters."""

    tracker: ShapeTracker = field(default_factory=ShapeTracker)
    extra_stats: Optional[Callable[[ShapeTracker], dict[str, Any]]] = None

    def stats(self) -> dict[str, Any]:
        out = self.tracker.stats()
        if self.extra_stats is not None:
            out.update(self.extra_stats(self.tracker))
        return out


def self_contained_forward(
    call: Callable[[Inputs], Any], autocast: Callable[[], Any], tracker: ShapeTracker
) -> Callable[[Inputs], Outputs]:
    """The loop's forward: no autograd, the precision's autocast (if any), float32 outputs."""

    def forward(inputs: Inputs) -> Outputs:
        tracker.record(inputs)
        with torch.inference_mode(), autocast():
            outputs = call(inputs)
        return to_float32(outputs)

    return forward


def warmup_inputs(example: Inputs) -> list[Inputs]:
    """The example batch, then a cut of it with about half its rows and half its length: the loop's
    batches come in many lengths (and a smaller last batch), and the first new size makes compile
    build its dynamic-shape graph and the JIT executor re-profile. Doing that here keeps it in
    preparation time instead of the timed loop."""
    rows, length = next(iter(example.values())).shape[:2]
    fewer_rows = max(2, rows // 2) if rows > 2 else rows  # sizes 0 and 1 are always specialised
    shorter = (length // 2) // 8 * 8
    if shorter < 8:
        return [example]
    return [example, {name: tensor[:fewer_rows, :shorter].contiguous() for name, tensor in example.items()}]


def create_mode(name: str, **overrides: Any) -> Mode:
    """The mode `name` with its schema's defaults, `overrides` applied (cpueval.plugins.create)."""
    return plugins.create("mode", name, **overrides)  # type: ignore[return-value]


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".strip()


class GuardedMode(Mode):
    """Base for every mode here. Subclasses implement `build`; set `warmup_calls` if the first
    calls do work (tracing profiles, compiling) that must not be timed."""

    warmup_calls: int = 0

    def build(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> Built:
        raise NotImplementedError

    def prepare(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> PreparedModel:
        try:
            return self._prepare_unguarded(model, precision, ctx)
        except Exception as error:  # any failure: report it, fall back only if asked to
            reason = _one_line(error)
            if not self.config.fallback:
                raise ModeFailed(
                    f"mode={self.name} precision={precision.name} failed while preparing: {reason} "
                    f"(set mode.fallback=eager to run eager instead and record why)"
                ) from error
            return self._fall_back(model, precision, ctx, reason)

    def _prepare_unguarded(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> PreparedModel:
        built = self.build(model, precision, ctx)
        tracker = ShapeTracker()
        autocast = contextlib.nullcontext if self.implements(precision) else precision.autocast
        forward = self_contained_forward(built.call, autocast, tracker)
        for inputs in warmup_inputs(ctx.example) if self.warmup_calls else ():
            for _ in range(self.warmup_calls):
                forward(inputs)
        tracker.reset()  # stats describe the timed loop only
        if built.on_ready is not None:
            built.on_ready()
        return TrackedPreparedModel(
            forward=forward, mode=self.name, details=built.details, precision_details=built.precision_details,
            tracker=tracker, extra_stats=built.stats,
        )

    def _fall_back(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext, reason: str) -> PreparedModel:
        target = self.config.fallback
        log.warning("mode=%s failed (%s); falling back to mode=%s as configured", self.name, reason, target)
        fallback = create_mode(target)  # its own fallback stays None: no chains
        try:
            converts = precision.name != plugins.reference("precision")  # the reference precision converts nothing
            if converts and fallback.implements(precision) != self.implements(precision):
                raise Refused(f"mode={target} would need the model {'un' if self.implements(precision) else ''}"
                              f"converted by precision={precision.name}")
            plugins.check_together(detect_capabilities(), fallback, precision)
        except Refused as refused:
            raise ModeFailed(
                f"mode={self.name} failed ({reason}) and fallback mode={target} is refused: {refused}"
            ) from refused
        try:
            prepared = fallback.prepare(model, precision, ctx)
        except ModeFailed as failed:
            raise ModeFailed(f"mode={self.name} failed ({reason}); then fallback {failed}") from failed
        prepared.details = {**prepared.details, "requested_mode": self.name, "fallback_reason": reason}
        return prepared

