"""Test-only fault injection: a Hydra callback that makes chosen jobs fail, refuse, run out of memory,
die or stall right after their "running" record is written. cpueval itself never imports this.

A launch takes it with `launch_args(spec)` below:
    +hydra.callbacks.faults._target_=cpueval_faults.InjectFaults '+hydra.callbacks.faults.spec="<spec>"'
with PYTHONPATH including tests/support (joblib, submitit and Slurm workers inherit it). A Hydra
callback, not a config field, so the job's config, hash and directory stay those of the real job:
re-launching without it resumes the very same jobs (the faulted ones re-run, the others are skipped).

Spec: "selector:kind;selector:kind"; a selector is key=value,... over the job config (`mode` ->
mode.name, `model` -> model.name_or_path, `a.b` -> that value). Kinds: error (RuntimeError), oom
(MemoryError), refuse (Refused), kill (SIGKILL at once, as the OOM killer: results.json stays
"running"), delay=SECONDS (sleep, e.g. to requeue a job mid-run; only on a job's first attempt,
so a requeued Slurm job runs straight through).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SUPPORT_DIR = Path(__file__).resolve().parent
KINDS = ("error", "oom", "refuse", "kill", "delay")
# The first stage after the "running" record is on disk (cpueval.pipeline.Run.execute).
STAGE = "check_plugins"
log = logging.getLogger("cpueval")


def launch_args(spec: str) -> list[str]:
    """Command-line overrides that inject `spec` into a launch (set PYTHONPATH with `env_with_support`)."""
    return ["+hydra.callbacks.faults._target_=cpueval_faults.InjectFaults", f"+hydra.callbacks.faults.spec='{spec}'"]


def env_with_support(env: Mapping[str, str]) -> dict[str, str]:
    paths = [str(SUPPORT_DIR), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}


def parse_faults(spec: str) -> list[tuple[dict[str, str], str]]:
    """`sel[:kind];sel[:kind]` -> [(selector, kind)]."""
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        selector_text, _, kind = item.partition(":")
        kind = kind.strip() or "error"
        if kind.partition("=")[0] not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r} in {item!r}; one of {', '.join(KINDS)}")
        selector = {}
        for pair in filter(None, (p.strip() for p in selector_text.split(","))):
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"expected key=value, got {pair!r} in {item!r}")
            selector[key.strip()] = value.strip()
        faults.append((selector, kind))
    return faults


def _config_value(cfg: DictConfig, key: str) -> Optional[str]:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, DictConfig):
        value = value.get("name", value.get("name_or_path"))
    return None if value is None else str(value)


def matching_kind(faults: list[tuple[dict[str, str], str]], cfg: DictConfig) -> Optional[str]:
    for selector, kind in faults:
        if all(_config_value(cfg, key) == value for key, value in selector.items()):
            return kind
    return None


def inject(kind: str, what: str) -> None:
    log.warning(what)
    if kind.startswith("delay"):
        if int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0:
            time.sleep(float(kind.partition("=")[2] or "10"))
        return
    if kind == "kill":
        os.kill(os.getpid(), 9)
    if kind == "oom":
        raise MemoryError(what)
    if kind == "refuse":
        from cpueval.errors import Refused

        raise Refused(what)
    raise RuntimeError(what)


class InjectFaults(Callback):
    def __init__(self, spec: str) -> None:
        self.faults = parse_faults(spec)
        self._original: Any = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        kind = matching_kind(self.faults, config)
        if kind is None:
            return
        from cpueval.pipeline import Run

        original = getattr(Run, STAGE)  # AttributeError here: the stage was renamed; update STAGE
        what = f"injected fault ({kind})"

        def faulty_stage(run: Any) -> None:
            inject(kind, what)
            original(run)

        self._original = original
        setattr(Run, STAGE, faulty_stage)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self._original is not None:
            from cpueval.pipeline import Run

            setattr(Run, STAGE, self._original)
            self._original = None


class DyingMode:
    """mode._target_=cpueval_faults.DyingMode: eager, except that the instance without core 0 in its
    affinity mask kills itself (SIGKILL, as the OOM killer would) while preparing. For the
    multi-instance tests: the other instance is left waiting at the barrier."""

    def __new__(cls, config: Any) -> Any:
        from cpueval.modes.eager import EagerMode

        class _Dying(EagerMode):
            def build(self, model: Any, precision: Any, ctx: Any) -> Any:
                if 0 not in os.sched_getaffinity(0):
                    os.kill(os.getpid(), 9)
                return super().build(model, precision, ctx)

        return _Dying(config)
