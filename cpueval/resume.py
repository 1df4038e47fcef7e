"""Skip-if-done and per-job locks: what makes a sweep resumable.

A job is done when its directory holds a record for the same job identity (cpueval/identity.py) with
status ok, or refused by this same installation (same host and package versions: a refusal is a fact
about the config here, and re-running gives the same answer until a package changes). Failed,
interrupted and running (killed) records are re-run, and the new record keeps them in `earlier_attempts`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import platform
from pathlib import Path
from typing import Any, Iterator, Optional

from cpueval import records
from cpueval.environment import package_version
from cpueval.identity import job_config, job_hash
from cpueval.records import Attempt, ErrorInfo, Requested, RunRecord

LOCK_FILE = ".cpueval.lock"


def done_record(cfg: Any, run_dir: Path) -> Optional[RunRecord]:
    """The job dir's record if this job is done for this same job config, else None."""
    record = records.read_record(run_dir)
    if record is None or not record.config:
        return None
    if record.status == "ok" or (record.status == "refused" and same_installation(record)):
        return record if job_hash(record.config) == job_hash(cfg) else None
    return None


def same_installation(record: RunRecord) -> bool:
    """Recorded on this host with the package versions installed now (what refusals depend on),
    including the packages the job's plug-ins require (recorded as None when they were missing)."""
    env = record.environment
    return bool(env and env.versions) and env.host == platform.node() and all(
        package_version(name) == version for name, version in env.versions.items())


class Busy(Exception):
    """Another live process holds this job directory's lock."""


@contextlib.contextmanager
def job_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive lock on the job directory for as long as the job runs.

    flock is released by the kernel when the holder dies (kill -9, OOM killer), so a crashed job
    never blocks a re-launch; two launches of one sweep never run the same job at once."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise Busy(str(run_dir)) from err
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {os.uname().nodename}\n".encode())
        yield
    finally:
        os.close(fd)  # closing drops the lock


def write_failure(cfg: Any, run_dir: Path, err: BaseException) -> None:
    """Leave a failed record when the job raised before or outside the pipeline's own record."""
    raw = records.read_results(run_dir)
    if isinstance(raw, dict) and raw.get("status") not in (None, "running"):
        return  # the pipeline already recorded how it ended
    record = records.read_record(run_dir)
    if record is None:
        config = job_config(cfg)
        record = RunRecord(status="failed", started_at=now(), config_hash=job_hash(cfg), config=config,
                           requested=Requested(mode=_name(config, "mode"), precision=_name(config, "precision")),
                           run_dir=str(run_dir))
    record.status = "failed"
    record.error = ErrorInfo(type=type(err).__name__, message=str(err))
    record.finished_at = now()
    records.save(record, run_dir)


def _name(config: dict[str, Any], group: str) -> str:
    node = config.get(group)
    return str(node.get("name", "?")) if isinstance(node, dict) else "?"


def earlier_attempts(run_dir: Path, keep: int = 10) -> list[Attempt]:
    """The unfinished attempts a new run of this job replaces (interrupted, failed, killed while
    running), oldest first, each with its status, times, error and Slurm context: a requeued
    job's final record still shows that it was interrupted, when, and on which run."""
    record = records.read_record(run_dir)
    if record is None or record.status == "ok":
        return []
    attempt = Attempt(status=record.status, started_at=record.started_at, finished_at=record.finished_at,
                      error=record.error, slurm=record.environment.slurm if record.environment else None)
    return [*record.earlier_attempts, attempt][-keep:]


def now() -> str:
    """UTC time in milliseconds: the sweep summary tells a job run by this launch from one run by a launch
    that ended in the same second by comparing it with the launch's start."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
