"""torch.compile (TorchInductor by default), with recompiles counted and never silently skipped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from cpueval.errors import UserError
from cpueval.modes._common import Built, GuardedMode, ShapeTracker
from cpueval.modes.base import Inputs, ModeConfig, PrepareContext
from cpueval.precisions.base import Precision


@dataclass
class CompileConfig(ModeConfig):
    _target_: str = "cpueval.modes.compile.CompileMode"
    name: str = "compile"
    backend: str = "inductor"
    # torch.compile mode: null/"default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs".
    mode: Optional[str] = None
    # null: static first, dynamic after the first new shape (dynamo's automatic dynamic shapes);
    # true: dynamic from the start; false: one static graph per shape (needs recompile_limit >= shapes).
    dynamic: Optional[bool] = None
    fullgraph: bool = False
    # torch._inductor.config.freezing: fold weights into the graph as constants (inference only).
    freezing: bool = True
    # Graphs kept per frame before dynamo gives up; hitting it raises (dynamo would otherwise
    # silently run that frame eagerly for the rest of the job).
    recompile_limit: int = 64


SCHEMA = CompileConfig

MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _dynamo_counts() -> dict[str, int]:
    """Dynamo's counters (reset in prepare). torch 2.13 has no recompile counter: every frame
    compiled after the warm-up is a recompile (a new shape or another failed guard)."""
    from torch._dynamo.utils import counters

    return {
        "graphs_compiled": int(counters["stats"]["unique_graphs"]),
        "frames_compiled": int(counters["frames"]["ok"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def _configure(config: CompileConfig) -> None:
    """Process-wide settings: inductor reads them at every (re)compile, not only at torch.compile()."""
    import torch._dynamo
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()  # fresh caches and counters: stats describe this model only
    torch._dynamo.utils.counters.clear()
    inductor_config.freezing = config.freezing
    torch._dynamo.config.recompile_limit = config.recompile_limit
    torch._dynamo.config.fail_on_recompile_limit_hit = True


class CompileMode(GuardedMode):
    # Call 1 compiles; call 2 catches a compile triggered by the first run's guards (and is the
    # first call at steady state) — both stay out of the timed loop.
    warmup_calls = 2
    order = 20

    def __init__(self, config: CompileConfig):
        super().__init__(config)
        if config.mode not in MODES:
            raise UserError(f"mode.mode={config.mode!r} is not a torch.compile mode; choose one of {MODES[1:]}")

    def build(self, model: torch.nn.Module, precision: Precision, ctx: PrepareContext) -> Built:
        cfg = self.config
        _configure(cfg)
        mode = None if cfg.mode == "default" else cfg.mode
        compiled = torch.compile(model, backend=cfg.backend, mode=mode, dynamic=cfg.dynamic, fullgraph=cfg.fullgraph)
        after_prepare: dict[str, int] = {}  # counters once the warm-up calls have compiled

        def call(inputs: Inputs) -> Any:
            return compiled(**inputs)

        def stats(tracker: ShapeTracker) -> dict[str, Any]:
            now = _dynamo_counts()
            return {
                **now,
                "prepare_frames_compiled": after_prepare.get("frames_compiled", 0),
                "recompiles": now["frames_compiled"] - after_prepare.get("frames_compiled", 0),
            }

        details = {k: getattr(cfg, k) for k in ("backend", "mode", "dynamic", "fullgraph", "freezing")}
        return Built(call=call, details=details, stats=stats, on_ready=lambda: after_prepare.update(_dynamo_counts()))
