"""Accuracy-aware int8: the fewest Linear layers to keep in fp32 so that int8 keeps
`precision.accuracy_target` of the fp32 headline metric (MLPerf's 99% gate: accuracy_target=0.99).

1. Rank: each candidate layer quantized alone (every other layer fp32); its sensitivity is the
   relative output error against fp32 on the calibration batches (precision.calibration).
2. Search: keep the k most sensitive layers in fp32. k = 0, 1, 2, 4, ... until the metric on the
   validation slice (precision.search.validation: disjoint from the scored examples unless
   source=scored) reaches target x fp32, then bisect between the last failing and the passing k.
   Each evaluation is a step of the record; max_evaluations and max_seconds bound the search.
3. The kept list becomes precision.skip_modules for the run, is written as overrides to pass back
   (int8_search.yaml in the run dir) and cached under runtime.cache_dir/int8_search/, keyed by the
   model's content, the settings and the data that ranked and validated it: a sweep searches once.

Backends take part through `LayerQuantizer` (list the candidate layers; build the forward with some
layers left fp32): the PyTorch int8 precision (cpueval/precisions/int8.py) and the runtime modes that
quantize themselves (Mode.layer_quantizer) each implement it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import torch
import yaml

from cpueval.calibration import CalibrationSource
from cpueval.errors import UserError

log = logging.getLogger(__name__)

Inputs = Mapping[str, "torch.Tensor"]  # a string: torch stays deferred until a job runs (cpueval.lazy_imports)
Forward = Callable[[Inputs], Mapping[str, "torch.Tensor"]]
SEARCH_FORMAT = 1  # bump when the search's algorithm or cached entry changes
RESULT_FILE = "int8_search.yaml"


@dataclass
class ValidationConfig:
    samples: int = 200  # examples the metric is measured on at each step
    # unscored: after the scored examples (and after the calibration examples); held_out: the first scored
    # examples, then left out of scoring; path: a file of its own; scored: the first scored examples, which
    # stay scored (the search then sees the scored data: recorded).
    source: CalibrationSource = CalibrationSource.unscored
    path: Optional[str] = None


@dataclass
class SearchConfig:
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    max_evaluations: int = 12  # validation evaluations (steps), the fp32 reference not counted
    max_seconds: float = 3600.0  # no new step starts after this (ranking included)
    ranking_batches: int = 4  # calibration batches the sensitivity ranking runs on (one forward each per layer)
    metric: Optional[str] = None  # null: f1 when the task reports it, else its first headline metric


class LayerQuantizer(Protocol):
    """What a backend gives the search."""

    def candidates(self) -> list[str]:
        """Linear layers (qualified module names) that can be left in fp32."""

    def quantize(self, fp32_layers: Sequence[str]) -> Forward:
        """The int8 model's forward with `fp32_layers` (and the user's skip_modules) left in fp32."""

    def identity(self) -> dict[str, Any]:
        """Everything besides the model and data that changes what quantize() builds (cache key).
        A quantizer may also have reference() (the fp32 model in the same execution, else the eager one
        is used) and close(), called when the search ends."""


@dataclass
class Evaluation:
    metric: float
    forward_seconds: float


@dataclass
class Step:
    kept: int  # how many of the ranking's most sensitive layers stayed fp32
    metric: float
    ratio: float  # metric / fp32 metric
    passed: bool
    forward_seconds: float  # the validation slice's forward loop
    speedup: float  # fp32 forward seconds / this step's (same execution, validation slice)
    seconds: float  # the whole step: quantizing + evaluating


@dataclass
class SearchResult:
    fp32_layers: list[str]
    met_target: bool
    stopped: str  # why the search ended
    ranking: list[tuple[str, float]]
    steps: list[Step]
    reference_metric: float
    reference_forward_seconds: float
    seconds: float

    @property
    def evaluations(self) -> int:
        return len(self.steps)


def check_target(target: Optional[float]) -> None:
    if target is not None and not 0 < target <= 1:
        raise UserError(f"precision.accuracy_target={target} must be in (0, 1], e.g. 0.99 (keep 99% of fp32's "
                        f"metric), or null for no search")


def gate_metric(headline: Sequence[str], chosen: Optional[str]) -> str:
    """The metric the search holds to its target: as the report's gate picks it."""
    if chosen:
        if chosen not in headline:
            raise UserError(f"precision.search.metric={chosen!r} is not a headline metric of the task "
                            f"({', '.join(headline)})")
        return chosen
    return "f1" if "f1" in headline else headline[0]


# -- ranking ----------------------------------------------------------------------------------------
def output_error(reference: Sequence[Mapping[str, torch.Tensor]], forward: Forward,
                 batches: Sequence[Inputs]) -> float:
    """Relative L2 error of the outputs against the reference, over every output and batch."""
    diff = norm = 0.0
    with torch.inference_mode():
        for ref, batch in zip(reference, batches):
            out = forward(batch)
            for name, value in ref.items():
                diff += float(torch.sum((out[name].float() - value) ** 2))
                norm += float(torch.sum(value ** 2))
    return (diff / norm) ** 0.5 if norm else 0.0


def rank_layers(quantizer: LayerQuantizer, fp32: Forward, batches: Sequence[Inputs]) -> list[tuple[str, float]]:
    """Candidates, most sensitive first: the output error with only that layer quantized."""
    if not batches:
        raise UserError("precision.accuracy_target needs calibration batches to rank layers: "
                        "set precision.calibration.samples > 0")
    with torch.inference_mode():
        reference = [{k: v.float() for k, v in fp32(b).items()} for b in batches]
    candidates = quantizer.candidates()
    log.info("int8 search: ranking %d layers on %d calibration batches", len(candidates), len(batches))
    errors = []
    for layer in candidates:
        errors.append((layer, output_error(reference, quantizer.quantize([c for c in candidates if c != layer]), batches)))
        log.debug("int8 search: %s alone -> output error %.5f", layer, errors[-1][1])
    return sorted(errors, key=lambda item: -item[1])


# -- the search ---------------------------------------------------------------------------------------
@dataclass
class Budget:
    max_evaluations: int
    max_seconds: float
    start: float = field(default_factory=time.perf_counter)

    def exhausted(self, evaluations: int) -> Optional[str]:
        if evaluations >= self.max_evaluations:
            return f"max_evaluations={self.max_evaluations} reached"
        if time.perf_counter() - self.start >= self.max_seconds:
            return f"max_seconds={self.max_seconds:g} reached"
        return None


def next_kept(tried: Mapping[int, bool], count: int) -> Optional[int]:
    """The next k to try: 0, then doubling until one passes, then bisecting the gap between the largest
    failing k and the smallest passing k. None when the smallest passing k is found."""
    passing = [k for k, ok in tried.items() if ok]
    failing = [k for k, ok in tried.items() if not ok]
    if not tried:
        return 0
    if not passing:
        top = max(failing)
        return None if top >= count else min(count, max(1, 2 * top))
    low, high = max([k for k in failing if k < min(passing)], default=-1), min(passing)
    return None if high - low <= 1 else (low + high) // 2


def search(quantizer: LayerQuantizer, ranking: Sequence[tuple[str, float]], evaluate: Callable[[Forward], Evaluation],
           reference: Evaluation, target: float, budget: Budget) -> SearchResult:
    """Keep the most sensitive layers in fp32, fewest first, until the metric reaches target x fp32."""
    order = [layer for layer, _ in ranking]
    tried: dict[int, bool] = {}
    steps: list[Step] = []
    stopped = "target met with the fewest fp32 layers tried"
    while (k := next_kept(tried, len(order))) is not None:
        if why := budget.exhausted(len(steps)):
            stopped = why
            break
        start = time.perf_counter()
        result = evaluate(quantizer.quantize(order[:k]))
        ratio = result.metric / reference.metric if reference.metric else (1.0 if result.metric >= 0 else 0.0)
        tried[k] = ratio >= target
        steps.append(Step(kept=k, metric=result.metric, ratio=ratio, passed=tried[k],
                          forward_seconds=result.forward_seconds, seconds=time.perf_counter() - start,
                          speedup=reference.forward_seconds / result.forward_seconds if result.forward_seconds else 0.0))
        log.info("int8 search: %d layer(s) fp32 -> metric %.4f (%.2f%% of fp32) %s", k, result.metric,
                 100 * ratio, "pass" if tried[k] else "fail")
    else:
        if not any(tried.values()):
            stopped = "target not met even with every layer fp32"
    chosen = _chosen(steps)
    return SearchResult(fp32_layers=order[:chosen.kept] if chosen else [], met_target=bool(chosen and chosen.passed),
                        stopped=stopped, ranking=list(ranking), steps=steps, reference_metric=reference.metric,
                        reference_forward_seconds=reference.forward_seconds, seconds=time.perf_counter() - budget.start)


def _chosen(steps: Sequence[Step]) -> Optional[Step]:
    """The passing step with the fewest fp32 layers; if none passed, the most accurate one."""
    passing = [s for s in steps if s.passed]
    if passing:
        return min(passing, key=lambda s: s.kept)
    return max(steps, key=lambda s: s.metric, default=None)


# -- cache and files ---------------------------------------------------------------------------------------
def cache_key(material: Mapping[str, Any]) -> str:
    text = json.dumps({"format": SEARCH_FORMAT, **material}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load_cached(cache_dir: Optional[Path], key: str) -> Optional[dict[str, Any]]:
    path = cache_dir / "int8_search" / f"{key}.json" if cache_dir else None
    if path is None or not path.exists():
        return None
    return json.loads(path.read_text())


def save_cached(cache_dir: Optional[Path], key: str, entry: Mapping[str, Any]) -> None:
    """Written to a temporary file and renamed: concurrent sweep jobs never read half an entry."""
    if not cache_dir:
        return
    directory = Path(cache_dir).expanduser() / "int8_search"
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", dir=directory)
    with os.fdopen(fd, "w") as handle:
        json.dump(entry, handle, indent=1, default=str)
    os.replace(tmp, directory / f"{key}.json")


def overrides(skip_modules: Sequence[str]) -> list[str]:
    """The overrides that rebuild the chosen int8 model without searching again."""
    listed = ",".join(json.dumps(name) for name in skip_modules)
    return [f"precision.skip_modules=[{listed}]", "precision.accuracy_target=null"]


def write_result(run_dir: Path, skip_modules: Sequence[str], summary: Mapping[str, Any]) -> Path:
    """int8_search.yaml: the overrides to pass back, the chosen values, and how they were found."""
    path = Path(run_dir) / RESULT_FILE
    content = {"overrides": overrides(skip_modules), "precision": {"skip_modules": list(skip_modules),
               "accuracy_target": None}, "found": dict(summary)}
    path.write_text(yaml.safe_dump(content, sort_keys=False, width=1000))
    return path


def as_entry(result: SearchResult) -> dict[str, Any]:
    """The cached form of a search result."""
    return {**asdict(result), "ranking": [[layer, error] for layer, error in result.ranking]}


def from_entry(entry: Mapping[str, Any]) -> SearchResult:
    data = dict(entry)
    data["steps"] = [Step(**s) for s in data["steps"]]
    data["ranking"] = [(layer, error) for layer, error in data["ranking"]]
    return SearchResult(**data)


def find(quantizer: LayerQuantizer, fp32: Forward, ranking_batches: Sequence[Inputs],
         evaluate: Callable[[Forward], Evaluation], target: float, settings: SearchConfig,
         cache_dir: Optional[Path], material: Mapping[str, Any]) -> tuple[SearchResult, str, str]:
    """(result, cache hit|miss|disabled, cache key): the cached result of the same search, else rank the
    layers, evaluate fp32 on the validation slice, search, and cache what was found."""
    if settings.max_evaluations <= 0 or settings.max_seconds <= 0 or settings.ranking_batches <= 0:
        raise UserError("precision.search.max_evaluations, max_seconds and ranking_batches must be > 0")
    search_settings = {k: v for k, v in asdict(settings).items() if k != "validation"}
    key = cache_key({**material, "quantizer": quantizer.identity(), "target": target, "search": search_settings})
    cached = load_cached(cache_dir, key)
    if cached is not None:
        return from_entry(cached), "hit", key
    budget = Budget(settings.max_evaluations, settings.max_seconds)
    fp32 = getattr(quantizer, "reference", lambda: fp32)()
    # The ranking depends on neither the target nor the validation slice: cached on its own, so a search
    # with another target or slice skips it.
    ranking_key = "ranking-" + cache_key({k: v for k, v in material.items() if k not in ("validation", "metric", "task")}
                                         | {"quantizer": quantizer.identity(), "batches": settings.ranking_batches})
    try:
        ranking = [tuple(r) for r in (load_cached(cache_dir, ranking_key) or {}).get("ranking", [])]
        if not ranking:
            ranking = rank_layers(quantizer, fp32, list(ranking_batches)[: settings.ranking_batches])
            save_cached(cache_dir, ranking_key, {"ranking": ranking})
        reference = evaluate(fp32)
        result = search(quantizer, ranking, evaluate, reference, target, budget)
    finally:
        getattr(quantizer, "close", lambda: None)()  # e.g. a temporary export
    save_cached(cache_dir, key, as_entry(result))
    return result, "miss" if cache_dir else "disabled", key
