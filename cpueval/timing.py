"""Stage timing and latency statistics (perf_counter; percentiles from the raw values)."""

from __future__ import annotations

import contextlib
import resource
import threading
import time
from typing import Iterator, Sequence

import numpy as np
import psutil


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
    """Per-call latency in milliseconds: count, mean, p50/p90/p99/p99.9, min, max."""
    if len(latencies_s) == 0:
        return {"count": 0}
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    p50, p90, p99, p999 = np.percentile(ms, [50, 90, 99, 99.9])
    return {
        "count": int(ms.size),
        "mean": float(ms.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "p999": float(p999),
        "min": float(ms.min()),
        "max": float(ms.max()),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RssSampler:
    """Peak RSS during one job, sampled in a background thread.

    The process-lifetime peak (ru_maxrss) is wrong for the second and later jobs of a multirun that
    Hydra's basic launcher runs in one process; sampling measures this job alone (to within the
    sampling interval)."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpueval-rss", daemon=True)
        self._process = psutil.Process()

    def _run(self) -> None:
        while True:
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop sampling; the job's peak in MB."""
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
        return self.peak_bytes / 2**20


def per_second(count: float, seconds: float) -> float | None:
    return count / seconds if seconds > 0 else None
