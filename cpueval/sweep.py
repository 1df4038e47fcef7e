"""Sweeps that can be resumed: job identity, skip-if-done, per-job locks, fault injection, and the
Hydra callback that summarises a launch, sets the exit code and writes the report.

Job identity. A job's directory is ``<sweep dir>/<readable overrides>__<job hash>``, where the
job hash is `job_hash` of the job's resolved config (see there for exactly what it covers). The
same hash is recomputed from the config stored in results.json, so "is this job done?" compares
like with like: same directory, same hash, and status ok (or refused by this same installation)
-> skipped; failed, interrupted and running (killed) records are re-run. Distinct configs get distinct
directories even when Hydra's override string is truncated or identical (hydra#2925), and the
same config always lands in the same directory, launch after launch (hydra#1407).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from cpueval.records import RESULTS_FILE, _jsonable, read_results, write_json_atomic

log = logging.getLogger("cpueval")

HASH_CHARS = 8
# Keys that change neither what a job computes nor its numbers: left out of the job hash (and of
# Hydra's override_dirname, conf/config.yaml), so toggling them keeps the job's directory.
NOT_IN_HASH = ("runtime.force", "runtime.progress", "runtime.cache_dir")
# Longest readable part of a job directory name; the hash keeps truncated names distinct.
MAX_READABLE = 180  # + '__' + hash stays well under the 255-byte name limit
LOCK_FILE = ".cpueval.lock"
FAULT_ENV = "CPUEVAL_INJECT_FAULT"
RESOLVERS = ("cpueval.job_hash", "cpueval.job_subdir")


# -- job identity -------------------------------------------------------------------------------
def job_config(cfg: Any) -> dict[str, Any]:
    """The job config as plain JSON data: resolved, without the `hydra` node and NOT_IN_HASH keys.

    Accepts the full Hydra config (resolver `_root_`), the task function's config, or the plain
    dict stored in results.json. Top-level nodes are resolved one at a time so that resolving
    never touches `hydra` (whose sweep.subdir is what calls this)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        data = {k: _plain(cfg[k]) for k in cfg if k != "hydra"}
    else:
        data = {k: v for k, v in dict(cfg).items() if k != "hydra"}
    data = json.loads(json.dumps(_jsonable(data), default=str))  # same form as results.json's copy
    for dotted in NOT_IN_HASH:
        *parents, leaf = dotted.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return data


def _plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def job_hash(cfg: Any) -> str:
    """sha256 (first HASH_CHARS hex digits) of `job_config(cfg)` as sorted-key JSON."""
    blob = json.dumps(job_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:HASH_CHARS]


def job_subdir(override_dirname: str, root: Any) -> str:
    """`<overrides>__<hash>`: readable, safe as one path component, unique per job config."""
    readable = re.sub(r"[^A-Za-z0-9=,.+_-]+", "_", str(override_dirname or "")).strip("._") or "default"
    return f"{readable[:MAX_READABLE]}__{job_hash(root)}"


def register_resolvers() -> None:
    """`${cpueval.job_hash:}` and `${cpueval.job_subdir:${hydra.job.override_dirname}}` (idempotent).

    They get the whole config through `_root_`; Hydra resolves hydra.sweep.subdir in run_job after
    composing the job's config, so `_root_` is that job's config, overrides applied."""
    if not OmegaConf.has_resolver("cpueval.job_hash"):
        OmegaConf.register_new_resolver("cpueval.job_hash", lambda *, _root_: job_hash(_root_))
    if not OmegaConf.has_resolver("cpueval.job_subdir"):
        OmegaConf.register_new_resolver("cpueval.job_subdir",
                                        lambda dirname="", *, _root_: job_subdir(dirname, _root_))


# -- skip if done ---------------------------------------------------------------------------------
def done_record(cfg: Any, run_dir: Path) -> Optional[dict[str, Any]]:
    """The job dir's record if this job is done for this same job config, else None.

    Done: status ok; or status refused by this same installation (same host, same package
    versions): a refusal is a fact about the config here, re-running gives the same answer. Failed,
    running and interrupted records, and records of another config, are re-run."""
    record = read_results(run_dir)
    if not record or not isinstance(record.get("config"), dict):
        return None
    if record.get("status") == "ok" or (record.get("status") == "refused" and same_installation(record)):
        return record if job_hash(record["config"]) == job_hash(cfg) else None
    return None


def same_installation(record: Mapping[str, Any]) -> bool:
    """Recorded on this host with the package versions installed now (what refusals depend on)."""
    import platform

    from cpueval.environment import package_version

    env = record.get("environment") or {}
    versions = env.get("versions") or {}
    return bool(versions) and env.get("host") == platform.node() and all(
        package_version(name) == version for name, version in versions.items())


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
    record = read_results(run_dir)
    if record and record.get("status") not in (None, "running"):
        return  # the pipeline already recorded how it ended
    write_json_atomic(Path(run_dir) / RESULTS_FILE, {
        **(record or {}),
        "status": "failed",
        "error": {"type": type(err).__name__, "message": str(err)},
        "config": job_config(cfg) if not record else record.get("config"),
        "started_at": (record or {}).get("started_at") or _now(),
        "finished_at": _now(),
        "run_dir": str(run_dir),
    })


def earlier_attempts(run_dir: Path, keep: int = 10) -> list[dict[str, Any]]:
    """The unfinished attempts a new run of this job replaces (interrupted, failed, killed while
    running), oldest first, each with its status, times, error and Slurm context: a requeued
    job's final record still shows that it was interrupted, when, and on which run."""
    record = read_results(run_dir)
    if not record or record.get("status") in (None, "ok"):
        return []
    attempt = {key: record.get(key) for key in ("status", "started_at", "finished_at", "error")}
    attempt["slurm"] = (record.get("environment") or {}).get("slurm")
    return [*(record.get("earlier_attempts") or []), attempt][-keep:]


# -- submit only what is not done (hydra-submitit-launcher) ---------------------------------------
def skip_done_before_submit() -> None:
    """Make the submitit launchers (hydra/launcher=slurm|local) leave out jobs that are done.

    Re-launching a sweep would otherwise submit one array task per job, each of which then only
    finds its ok record and skips -- on a busy cluster that is a queue wait per finished job. The
    launch now checks each job's directory first (the same `done_record` test run_job makes) and
    submits only the others; done jobs are returned to the sweeper as "skipped"/"refused" without
    running. Hydra refuses launcher plugins outside the hydra_plugins package, hence a wrapper
    around the plugin's `launch` rather than a subclass; it must be installed after Hydra's plugin
    scan (which re-executes plugin modules), i.e. from SweepCallback.on_multirun_start.
    Idempotent; a no-op without the plugin."""
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
    except ImportError:  # pragma: no cover - plugin not installed
        return
    original = BaseSubmititLauncher.launch
    if getattr(original, "_cpueval_skips_done", False):
        return

    def launch(self: Any, job_overrides: Any, initial_job_idx: int) -> Any:
        done = [_done_before_submit(self, overrides) for overrides in job_overrides]
        todo = [overrides for overrides, ret in zip(job_overrides, done) if ret is None]
        if len(todo) < len(job_overrides):
            log.info("%d of %d jobs already done in %s: not submitted (runtime.force=true re-runs them)",
                     len(job_overrides) - len(todo), len(job_overrides), self.config.hydra.sweep.dir)
        results = iter(original(self, todo, initial_job_idx) if todo else [])
        return [next(results) if ret is None else ret for ret in done]

    launch._cpueval_skips_done = True  # type: ignore[attr-defined]
    BaseSubmititLauncher.launch = launch


def _done_before_submit(launcher: Any, overrides: Any) -> Any:
    """A completed JobReturn if this sweep job is done (skip it), else None (submit it)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobReturn, JobStatus

    saved = HydraConfig.instance().cfg
    try:
        config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        if bool(OmegaConf.select(config, "runtime.force", default=False)):
            return None
        HydraConfig.instance().set_config(config)
        run_dir = Path(str(launcher.config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        record = done_record(config, run_dir)
    except Exception as err:  # cannot tell: submit it, run_job decides there
        log.debug("cannot tell whether %s is done (%s): submitting it", list(overrides), err)
        return None
    finally:
        HydraConfig.instance().cfg = saved
    if record is None:
        return None
    status = "skipped" if record.get("status") == "ok" else "refused"
    log.info("skipped (%s): %s", "done" if status == "skipped" else "refused before, same host and packages", run_dir)
    return JobReturn(overrides=list(overrides), working_dir=str(run_dir), task_name=str(config.hydra.job.name),
                     status=JobStatus.COMPLETED, _return_value=status)


# -- signals: preemption, time limit, requeue, Ctrl-C -------------------------------------------
class Interrupted(KeyboardInterrupt):
    """Raised in the job by SIGTERM/SIGUSR2 (Slurm requeue/preemption/time limit, scancel, kill).

    A KeyboardInterrupt, so the pipeline records the run as `interrupted` exactly as for Ctrl-C.
    `previous` is the handler that was installed before cpueval's (submitit's requeue handler for
    SIGUSR2 in a Slurm job), to be called once the record is written."""

    def __init__(self, signum: int, previous: Any = None) -> None:
        self.signum = signum
        self.previous = previous
        super().__init__(f"{signal.Signals(signum).name}: {SIGNAL_MEANING.get(signum, 'signal')}")


SIGNAL_MEANING = {
    signal.SIGTERM: "stopped (Slurm requeue, preemption or scancel, or kill); re-run the job to finish it",
    signal.SIGUSR2: "Slurm time limit near or preemption (submitit requeues the job)",
    signal.SIGINT: "interrupted by the user",
}
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """While the job runs, SIGTERM and SIGUSR2 raise `Interrupted` in the main thread (once; a
    repeated signal while the job is being recorded is ignored). The handlers that were installed
    before (submitit's in a Slurm job) are restored on exit. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    fired: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if fired:
            log.warning("%s received again while stopping: ignored", signal.Signals(signum).name)
            return
        fired.append(signum)
        log.warning("%s received: recording the run as interrupted", signal.Signals(signum).name)
        raise Interrupted(signum, previous[signum])

    for signum in HANDLED_SIGNALS:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)


def exit_interrupted(err: KeyboardInterrupt) -> None:
    """After an interruption is recorded: hand the signal to the handler it pre-empted (submitit's
    SIGUSR2 handler checkpoints, requeues the job and exits), else exit 128 + signal number.

    SystemExit, not an exception: it passes through Hydra's run_job and submitit's job wrapper, so
    no result is returned for an unfinished job -- the launcher waits for the requeued run, and a
    job stopped inside Slurm's kill grace period does not report success and then run again."""
    signum = getattr(err, "signum", signal.SIGINT)
    previous: Optional[Callable[..., Any]] = getattr(err, "previous", None)
    if callable(previous):
        previous(signum, None)  # submitit: requeue + sys.exit(-1), or raise if out of requeues
    raise SystemExit(128 + int(signum))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# -- fault injection (tests) -----------------------------------------------------------------------
# CPUEVAL_INJECT_FAULT="mode=compile,precision=int8:oom;runtime.batch_size=8:error"
# An environment variable, not a config field, on purpose: it must not change the job's config,
# hash or directory, so that re-launching the same sweep without it resumes the very same jobs
# (the faulted ones re-run, the others are skipped). It reaches joblib/submitit workers through
# their inherited environment. Kinds: error (RuntimeError), oom (MemoryError), refuse (Refused),
# kill (the process dies at once with SIGKILL, as under the OOM killer: results.json stays "running"),
# delay=SECONDS (sleeps that long after the "running" record, e.g. to requeue a job mid-run).
FAULT_KINDS = ("error", "oom", "refuse", "kill", "delay")


def parse_faults(spec: str) -> list[tuple[dict[str, str], str]]:
    """`sel[:kind];sel[:kind]` -> [(selector, kind)]; a selector is `key=value,key=value`."""
    faults = []
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        selector_text, _, kind = item.partition(":")
        kind = kind.strip() or "error"
        name, _, arg = kind.partition("=")
        if name == "delay":
            try:
                float(arg or "10")
            except ValueError:
                raise ValueError(f"{FAULT_ENV}: delay=SECONDS expected, got {kind!r} in {item!r}") from None
        elif kind not in FAULT_KINDS:
            raise ValueError(f"{FAULT_ENV}: unknown fault kind {kind!r} in {item!r}; one of {', '.join(FAULT_KINDS)}")
        selector = {}
        for pair in filter(None, (p.strip() for p in selector_text.split(","))):
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(f"{FAULT_ENV}: expected key=value, got {pair!r} in {item!r}")
            selector[key.strip()] = value.strip()
        faults.append((selector, kind))
    return faults


def _config_value(cfg: Any, key: str) -> Optional[str]:
    """`mode` -> mode.name, `model` -> model.name_or_path, `a.b` -> that value, as a string."""
    value = OmegaConf.select(cfg, key) if isinstance(cfg, DictConfig) else None
    if isinstance(value, DictConfig):
        value = value.get("name", value.get("name_or_path"))
    return None if value is None else str(value)


def matches(selector: Mapping[str, str], cfg: Any) -> bool:
    return all(_config_value(cfg, key) == value for key, value in selector.items())


def inject_fault(cfg: Any) -> None:
    """Raise (or die) as CPUEVAL_INJECT_FAULT says for this job; a no-op when it is unset."""
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    for selector, kind in parse_faults(spec):
        if matches(selector, cfg):
            what = f"injected fault ({FAULT_ENV}: {kind} for {','.join(f'{k}={v}' for k, v in selector.items())})"
            log.warning(what)
            if kind.startswith("delay"):
                time.sleep(float(kind.partition("=")[2] or "10"))
                continue
            if kind == "kill":
                os.kill(os.getpid(), 9)
            if kind == "oom":
                raise MemoryError(what)
            if kind == "refuse":
                from cpueval.errors import Refused

                raise Refused(what)
            raise RuntimeError(what)


# -- launch summary, exit code, report (Hydra callback) -------------------------------------------
_launch_failures: list[str] = []
_launch_config: list[DictConfig] = []  # the config of the multirun launch in progress (SweepCallback)


def launch_config() -> Optional[DictConfig]:
    """The config of the multirun launched in this process (for launcher error messages), or None."""
    return _launch_config[0] if _launch_config else None


def launch_exit_code() -> int:
    """1 if, after the last multirun launch in this process, a job of its sweep dir is not ok."""
    return 1 if _launch_failures else 0


def scan_jobs(sweep_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(job dir, record) for every results.json under sweep_dir, sorted by path."""
    jobs = []
    for path in sorted(Path(sweep_dir).rglob(RESULTS_FILE)):
        if ".submitit" in path.parts:
            continue
        record = read_results(path.parent)
        jobs.append((path.parent, record or {"status": "unreadable"}))
    return jobs


def summarize_launch(sweep_dir: Path, launch_start: dt.datetime) -> dict[str, Any]:
    """Counts for the sweep dir, and which jobs ran in this launch (started at or after its start).

    A job skipped as done keeps its earlier record, so it counts as done, not as run."""
    floor = launch_start.replace(microsecond=0)
    ran, done, not_ok, statuses = [], [], [], {}
    for job_dir, record in scan_jobs(sweep_dir):
        started = _parse_time(record.get("started_at"))
        this_launch = started is not None and started >= floor
        status = record.get("status", "unknown")
        statuses[status] = statuses.get(status, 0) + 1
        (ran if this_launch else done).append(job_dir)
        if status != "ok":
            not_ok.append((job_dir, status, _reason(record), this_launch))
    return {"ran": ran, "done_before": done, "not_ok": not_ok, "statuses": statuses}


def _parse_time(text: Any) -> Optional[dt.datetime]:
    try:
        return dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None


def _reason(record: Mapping[str, Any]) -> str:
    error = record.get("error") or {}
    return f"{error.get('type', '')}: {error.get('message', '')}".strip(": ") if error else ""


try:  # hydra.experimental.callback is part of hydra-core >= 1.1
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]


class SweepCallback(Callback):  # type: ignore[misc]
    """Runs where the sweep was launched (not on the workers): notes the launch time, then at the
    end logs what ran, what failed and why, sets the exit code, and writes the sweep's report."""

    def __init__(self, report: bool = True, baseline: str = "mode=eager,precision=fp32", gate: float = 0.99,
                 report_subdir: str = "report") -> None:
        self.report = report
        self.baseline = baseline
        self.gate = gate
        self.report_subdir = report_subdir
        self.started = dt.datetime.now(dt.timezone.utc)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = dt.datetime.now(dt.timezone.utc)
        _launch_failures.clear()
        _launch_config[:] = [config]
        skip_done_before_submit()  # after Hydra's plugin scan, which re-executes the plugin modules

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        summary = summarize_launch(sweep_dir, self.started)
        # The sweep dir is the unit: a job refused before and skipped now still makes the exit code 1.
        _launch_failures[:] = [str(item[0]) for item in summary["not_ok"]]
        total = len(summary["ran"]) + len(summary["done_before"])
        counts = ", ".join(f"{n} {status}" for status, n in sorted(summary["statuses"].items()))
        log.info("sweep %s: %d jobs (%s); this launch ran %d, %d had run before", sweep_dir, total,
                 counts or "none", len(summary["ran"]), len(summary["done_before"]))
        for job_dir, status, reason, _ in summary["not_ok"]:
            log.error("  %s %s: %s", status, job_dir.name, reason or "(no reason recorded)")
        if self.report and total:
            self._write_report(sweep_dir)

    def _write_report(self, sweep_dir: Path) -> None:
        from cpueval import report

        try:
            out = report.write_report([sweep_dir], sweep_dir / self.report_subdir, self.baseline, self.gate)
            log.info("report: %s", out)
        except Exception as err:  # the jobs' results stand; `cpueval report` can be re-run by hand
            log.error("report failed (%s: %s); re-run: cpueval report %s", type(err).__name__, err, sweep_dir)
