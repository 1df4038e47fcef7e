"""Stage timing and latency statistics (perf_counter; percentiles from the raw values)."""

from __future__ import annotations

import contextlib
import resource
import time
from typing import Iterator, Sequence

import numpy as np


class StageTimer:
    """Wall time per named pipeline stage, in the order the stages ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float]:
    """Per-call latency in milliseconds: count, mean, p50/p90/p99, min, max."""
    if len(latencies_s) == 0:
        return {"count": 0}
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "count": int(ms.size),
        "mean": float(ms.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "min": float(ms.min()),
        "max": float(ms.max()),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def per_second(count: float, seconds: float) -> float | None:
    return count / seconds if seconds > 0 else None
