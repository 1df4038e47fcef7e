"""Several instances of the model on one machine (runtime.instances > 1), as a many-core server runs
them (`torch.backends.xeon.run_cpu --ninstances`, MLPerf's CPU submissions).

Each instance is a worker process started with `spawn` (a fresh interpreter: no OpenMP pool or
compiled graphs inherited through fork), pinned with its affinity mask to its own cores out of the
ones this job may use (the affinity mask, so a Slurm grant is respected) and running that many
threads. It loads the model and prepares it itself, with the same stage functions as a
single-process run (cpueval.pipeline: prepare_model, warm_up, forward_loop); export and compile
caches under runtime.cache_dir are shared. The batches are split into shards balanced by computed
token positions; every instance waits at a barrier after its warm-up, so the timed loops start
together. The parent merges the outputs back into feature order, so post-processing and metrics
are those of a single-process run over the same batches. An instance that raises or dies ends all
of them and fails the job with its reason.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import resource
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from cpueval.batching import Batch
from cpueval.errors import Refused, UserError
from cpueval.modes.base import PrepareContext

POLL_S = 0.5


class InstanceFailed(RuntimeError):
    """An instance raised or died; the message names it, its cores and the reason."""


def plan_cores(instances: int, cores_per_instance: Optional[int], usable: Sequence[int]) -> list[list[int]]:
    """Disjoint core sets, one per instance, from the cores this job may use (default: an even split)."""
    usable = sorted(usable)
    if instances < 1:
        raise UserError(f"runtime.instances={instances} must be >= 1")
    per = cores_per_instance if cores_per_instance is not None else max(len(usable) // instances, 1)
    if per < 1:
        raise UserError(f"runtime.cores_per_instance={per} must be >= 1 (or null: the usable cores ÷ instances)")
    if instances * per > len(usable):  # a fact about this machine (or Slurm grant), as a CPU without bf16
        raise Refused(f"runtime.instances={instances} x runtime.cores_per_instance={per} needs {instances * per} "
                        f"cores but this job may use {len(usable)} ({_cores(usable)}): lower one of them")
    return [usable[i * per:(i + 1) * per] for i in range(instances)]


def shard(batches: Sequence[Batch], count: int) -> list[list[int]]:
    """Batch numbers per instance, balanced by computed token positions (rows x padded length): the
    largest batch first, each to the instance with the least work so far; each shard in batch order."""
    cost = [b.shape[0] * b.shape[1] for b in batches]
    loads, shards = [0] * count, [[] for _ in range(count)]  # type: ignore[var-annotated]
    for number in sorted(range(len(batches)), key=lambda n: -cost[n]):
        lightest = min(range(count), key=loads.__getitem__)
        shards[lightest].append(number)
        loads[lightest] += cost[number]
    return [sorted(numbers) for numbers in shards]


@dataclass
class InstanceJob:
    """What one worker needs: its cores, the job's plug-in and model configs, its batches."""

    index: int
    cores: list[int]
    config: DictConfig  # the job config (model, task, mode, precision, runtime)
    context: PrepareContext
    batch_numbers: list[int]
    batches: list[Batch]
    num_features: int
    launched_at: float  # the parent's perf_counter when the workers started (CLOCK_MONOTONIC on Linux)


@dataclass
class InstanceResult:
    index: int
    pid: int
    cores: list[int]
    threads: int
    batch_numbers: list[int]
    per_feature: dict[int, dict[str, np.ndarray]]
    latencies_s: list[float]
    shapes: set[tuple[int, int]]
    ready_s: float  # from the launch to the model loaded: start-up, imports, loading
    prepare_s: float
    warmup_s: float
    loop_start: float  # perf_counter, comparable across processes
    loop_seconds: float
    peak_rss_mb: float
    prepared: dict[str, Any] = field(default_factory=dict)  # mode, details, precision_details, stats


def run_instances(jobs: Sequence[InstanceJob]) -> list[InstanceResult]:
    """Start one worker per job, wait for all; raise InstanceFailed (after stopping the others) if one fails."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(jobs)), context.Queue()
    processes = [context.Process(target=_instance_main, args=(job, barrier, results), name=f"cpueval-instance-{job.index}")
                 for job in jobs]
    try:
        for process in processes:
            process.start()
        return _collect(jobs, processes, results)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
            process.join()


def _collect(jobs: Sequence[InstanceJob], processes: Sequence[Any], results: Any) -> list[InstanceResult]:
    done: dict[int, InstanceResult] = {}
    seen_dead: set[int] = set()
    while len(done) < len(jobs):
        try:
            status, index, payload = results.get(timeout=POLL_S)
        except queue_module.Empty:
            for job, process in zip(jobs, processes):
                if process.exitcode is not None and job.index not in done:
                    if job.index in seen_dead:  # dead for a whole poll and nothing from it in the queue
                        raise InstanceFailed(f"instance {job.index} (cores {_cores(job.cores)}) died: "
                                             f"{_exit_reason(process.exitcode)}")
                    seen_dead.add(job.index)
            continue
        if status == "error":
            raise InstanceFailed(f"instance {index} (cores {_cores(jobs[index].cores)}) failed: {payload}")
        done[index] = payload
    return [done[job.index] for job in jobs]


def _cores(cores: Sequence[int]) -> str:
    return ",".join(map(str, cores))


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name} (out of memory?)"
    return f"exited with code {code} before its result"


# -- in the worker ---------------------------------------------------------------------------------------
def _instance_main(job: InstanceJob, barrier: Any, results: Any) -> None:
    try:
        results.put(("ok", job.index, _run_instance(job, barrier)))
    except threading.BrokenBarrierError:
        return  # another instance failed first; its own reason reaches the parent
    except Exception as err:
        traceback.print_exc()
        results.put(("error", job.index, f"{type(err).__name__}: {err}"))
        barrier.abort()


def _run_instance(job: InstanceJob, barrier: Any) -> InstanceResult:
    from cpueval import pipeline, plugins
    from cpueval.models import load_model

    os.sched_setaffinity(0, job.cores)
    torch.set_num_threads(len(job.cores))
    pipeline.set_progress_bars(False)  # one loop bar would be per instance: none (the parent reports)
    task, precision, mode = (plugins.build(job.config[group]) for group in ("task", "precision", "mode"))
    loaded = load_model(job.config.model, task, job.config.runtime.cache_dir)
    ready = time.perf_counter()
    prepared = pipeline.prepare_model(loaded.model, mode, precision, job.context)
    prepared_at = time.perf_counter()
    pipeline.warm_up(prepared, job.batches, job.config.runtime.warmup_batches)
    warm_at = time.perf_counter()
    barrier.wait()
    loop = pipeline.forward_loop(prepared, job.batches, task, job.num_features, progress=False)
    facts = {"mode": prepared.mode, "details": prepared.details, "precision_details": prepared.precision_details
             or precision.details(), "stats": prepared.stats()}
    return InstanceResult(
        index=job.index, pid=os.getpid(), cores=sorted(os.sched_getaffinity(0)), threads=torch.get_num_threads(),
        batch_numbers=job.batch_numbers, per_feature={i: v for i, v in enumerate(loop.per_feature) if v is not None},
        latencies_s=loop.latencies_s, shapes=loop.shapes, ready_s=ready - job.launched_at,
        prepare_s=prepared_at - ready, warmup_s=warm_at - prepared_at, loop_start=loop.started,
        loop_seconds=loop.seconds, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        prepared=facts)
