"""`cpueval mlflow DIR... [--tracking-uri URI] [--experiment NAME]`, and the optional Hydra callback
that does the same at the end of a sweep.

Puts finished runs and sweeps into MLflow from their results.json files, with one writer: jobs never
talk to MLflow themselves (many jobs writing one SQLite store at once race on its schema and
locks), the importer reads what they left. One MLflow run per job, found again on re-import by
the tags `cpueval.job_hash` (the job hash, as in the job directory's name) and `cpueval.job_dir`
(the directory the job ran in, as its record says): an unchanged record is skipped, a changed one
(a resumed sweep re-ran it) updates the same run. Each sweep directory also gets one parent run
that holds the sweep's report and plots; its jobs are nested under it.

Params are the job config (what the job hash covers), metrics the record's numbers under their
results.json paths (`metrics.f1`, `throughput.forward_examples_per_s`, `latency_ms.p50`, ...),
tags the status and reason, CPU, versions, git commit and Slurm job.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

from cpueval.records import RESULTS_FILE

log = logging.getLogger("cpueval")

DEFAULT_TRACKING_URI = "sqlite:///outputs/mlflow.db"
DEFAULT_EXPERIMENT = "cpueval"
INSTALL_HINT = "pip install 'cpueval[mlflow]'"
ARTIFACTS_DIR = "mlartifacts"  # beside a SQLite store: artifacts of experiments this importer creates
REPORT_DIR = "report"
TAG = "cpueval."  # every tag this importer owns starts with it (and is removed when a record drops it)
# MLflow 3's limits (mlflow.utils.validation): longer param/tag values are refused, so truncated here.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
BATCH = 100  # params or tags per log_batch call (MLflow's limit; metrics allow 1000)
# The record's sections whose numbers become metrics, under their results.json paths.
METRIC_SECTIONS = ("metrics", "throughput", "latency_ms", "timing", "memory", "parity")
EXTRA_METRICS = ("data.padding_share",)
# The importer's own bookkeeping tags: never dropped as "no longer in the record".
KEPT_TAGS = frozenset(TAG + name for name in ("job_hash", "job_dir", "kind", "record_sha256", "sweep_key",
                                              "sweep_dir", "report_sha256"))
# MLflow run status per record status; a record still `running` (in progress, or killed) stays RUNNING.
RUN_STATUS = {"ok": "FINISHED", "failed": "FAILED", "refused": "FAILED", "interrupted": "FAILED",
              "running": "RUNNING"}


# -- records (the one place that reads them) -------------------------------------------------------
def _load_records(dirs: Iterable[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(job dir, record as plain data) for every results.json under dirs, read through the typed record
    (validated; older schema versions migrated); {} for an unreadable one. FileNotFoundError if a dir is missing."""
    from cpueval.records import to_dict
    from cpueval.report import find_records

    return [(job_dir, to_dict(record) if record is not None else {}) for job_dir, record in find_records(dirs)]


def _job_hash(record: Mapping[str, Any]) -> Optional[str]:
    """The job's identity (cpueval/identity.py): the `__<hash>` suffix of a sweep job's directory."""
    from cpueval.identity import job_hash

    config = record.get("config")
    return job_hash(config) if isinstance(config, Mapping) and config else None


def _job_config(record: Mapping[str, Any]) -> dict[str, Any]:
    """The config the job hash covers (without runtime.force/progress/cache_dir): the params."""
    from cpueval.identity import job_config

    return job_config(record.get("config") or {})


# -- what goes into MLflow --------------------------------------------------------------------------
def _get(data: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, Mapping):
            return None
        data = data.get(part)
    return data


def _key(name: str) -> str:
    """An MLflow key: letters, digits, _ - . / and spaces only (no colon: Windows refuses it), no '..'."""
    key = re.sub(r"[^\w./ -]", "_", name).replace("..", "_.")
    return key.strip("/")[:MAX_KEY] or "_"


def _text(value: Any) -> str:
    """Param/tag value as Hydra would write it: null, true/false, JSON for lists."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _leaves(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for each leaf; an empty mapping is a leaf ({})."""
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, key + ".")
        else:
            yield key, value


def job_params(record: Mapping[str, Any]) -> dict[str, str]:
    """The job config, flattened with dots. The settings left out of the job hash are left out
    here too: they may differ between two attempts of one job, and MLflow params cannot change."""
    return {_key(key): _text(value)[:MAX_PARAM_VALUE] for key, value in _leaves(_job_config(record))}


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def job_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """Every number of the metric sections, keyed by its results.json path (`metrics.f1`)."""
    found: dict[str, float] = {}
    for section in METRIC_SECTIONS:
        data = record.get(section)
        for key, value in _leaves(data, section + ".") if isinstance(data, Mapping) else ():
            if _number(value) is not None:
                found[_key(key)] = _number(value)  # type: ignore[assignment]
    for dotted in EXTRA_METRICS:
        if _number(_get(record, dotted)) is not None:
            found[_key(dotted)] = _number(_get(record, dotted))  # type: ignore[assignment]
    return found


def reason(record: Mapping[str, Any]) -> Optional[str]:
    error = record.get("error")
    if isinstance(error, Mapping):
        return f"{error.get('type', 'Error')}: {error.get('message', '')}"
    if record.get("status") == "running":
        return "still running, or killed (no end recorded)"
    return None


def job_tags(record: Mapping[str, Any]) -> dict[str, str]:
    """Status, reason, CPU, package versions, git commit, Slurm job (all under `cpueval.`)."""
    env = record.get("environment") or {}
    tags: dict[str, Any] = {
        "status": record.get("status", "unknown"),
        "reason": reason(record),
        "config_hash": record.get("config_hash"),
        "headline_metrics": ",".join(record.get("headline_metrics") or []) or None,
        "mode_actual": _get(record, "actual.mode"),
        "precision_actual": _get(record, "actual.precision"),
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "cpu.model": env.get("cpu_model"),
        "cpu.isa_flags": " ".join(env.get("isa_flags") or []) or None,
        "cpu.torch_capability": env.get("torch_cpu_capability"),
        "cpu.native_bf16": env.get("native_bf16"),
        "cpu.native_int8": env.get("native_int8"),
        "host": env.get("host"),
        "python": env.get("python"),
        "git_commit": env.get("git_commit"),
        "warnings": "\n".join(record.get("warnings") or []) or None,
    }
    tags.update({f"versions.{name}": version for name, version in (env.get("versions") or {}).items()})
    tags.update({f"slurm.{name}": value for name, value in (env.get("slurm") or {}).items()})
    out = {_key(TAG + key): _text(value)[:MAX_TAG_VALUE] for key, value in tags.items() if value is not None}
    if env.get("git_commit"):
        out["mlflow.source.git.commit"] = str(env["git_commit"])
    out["mlflow.note.content"] = _note(record)[:MAX_TAG_VALUE]  # the run's description in the UI
    return out


def _note(record: Mapping[str, Any]) -> str:
    lines = [f"**{record.get('status', 'unknown')}**" + (f": {reason(record)}" if reason(record) else "")]
    lines += [f"- {warning}" for warning in record.get("warnings") or []]
    return "\n\n".join(lines)


def job_artifacts(job_dir: Path, record: Mapping[str, Any]) -> list[Path]:
    """results.json, eval_results.json, the predictions files the record lists, the job's log."""
    names = [RESULTS_FILE, "eval_results.json", *(record.get("files") or [])]
    paths = [job_dir / name for name in dict.fromkeys(names)] + sorted(job_dir.glob("*.log"))
    return [path for path in paths if path.is_file()]


def record_digest(record: Mapping[str, Any]) -> str:
    """sha256 of the record's content. Of the parsed record rather than the file's bytes: the file
    may be rewritten (a job still running) between reading it and hashing it."""
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def _millis(text: Any) -> Optional[int]:
    try:
        return int(dt.datetime.fromisoformat(str(text)).timestamp() * 1000)
    except ValueError:
        return None


def _sweep_dir(job_dir: Path) -> Optional[Path]:
    """The sweep a job directory belongs to (Hydra writes multirun.yaml there), or None."""
    parent = job_dir.parent
    return parent if (parent / "multirun.yaml").is_file() or (parent / REPORT_DIR).is_dir() else None


def _recorded_dir(job_dir: Path, record: Mapping[str, Any]) -> str:
    """Where the job ran, as its record says: the same after the sweep is copied or moved elsewhere."""
    return str(record.get("run_dir") or job_dir.resolve())


def _files_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# -- the store ---------------------------------------------------------------------------------------
def resolve_tracking_uri(uri: Optional[str]) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the SQLite store under outputs/."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///relative` or `sqlite:////absolute` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?")[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def _one_writer(uri: str) -> Iterator[None]:
    """Imports into one SQLite file take turns (two sweeps ending at once, each with the callback)."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("mlflow: waiting for another import into %s", db)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


# MLflow settings for the import (unless the user set them), restored afterwards: a failing request
# is retried 7 times with growing waits by default (about 4 minutes for a server that is down), and
# ending a run on a server prints its URL to stdout (one line per job, around the summary line).
IMPORT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


@contextlib.contextmanager
def _import_env() -> Iterator[None]:
    added = {name: value for name, value in IMPORT_ENV.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _quiet_mlflow_logs() -> None:
    """The store's creation and migrations log at INFO on every first use; the summary line says enough."""
    for name in ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    """The experiment's id, creating it; a SQLite store's artifacts go beside the database file
    (MLflow's default would be ./mlruns in the current directory)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage != "active":
            raise ValueError(f"experiment {name!r} is deleted in {uri}: restore it "
                             f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) "
                             "or give another --experiment")
        return experiment.experiment_id
    db = _sqlite_path(uri)
    location = (db.parent.resolve() / ARTIFACTS_DIR).as_uri() if db else None
    return client.create_experiment(name, artifact_location=location)


# -- importing ---------------------------------------------------------------------------------------
@dataclass
class ImportSummary:
    tracking_uri: str
    experiment: str
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    unreadable: list[str] = field(default_factory=list)

    def line(self) -> str:
        extra = f", {len(self.unreadable)} unreadable skipped" if self.unreadable else ""
        return (f"mlflow: {self.created} runs created, {self.updated} updated, {self.unchanged} unchanged{extra}"
                f" -> {self.tracking_uri} (experiment {self.experiment})")


def import_dirs(dirs: Sequence[Path], tracking_uri: Optional[str] = None,
                experiment: str = DEFAULT_EXPERIMENT) -> ImportSummary:
    """Import every job record under dirs into one MLflow experiment; see the module docstring.

    FileNotFoundError for a missing dir or no results.json; ImportError without mlflow."""
    records = _load_records(dirs)
    if not records:
        raise FileNotFoundError("no results.json under " + ", ".join(map(str, dirs)))
    from mlflow.tracking import MlflowClient

    _quiet_mlflow_logs()
    uri = resolve_tracking_uri(tracking_uri)
    summary = ImportSummary(uri, experiment)
    with _one_writer(uri), _import_env():
        client = MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, experiment, uri)
        parents: dict[Path, str] = {}
        for job_dir, record in records:
            job = _job_hash(record)
            if job is None:  # unreadable, or no config to know the job by
                summary.unreadable.append(str(job_dir))
                log.warning("mlflow: skipped %s: no readable record", job_dir)
                continue
            sweep_dir = _sweep_dir(job_dir)
            if sweep_dir is not None and sweep_dir not in parents:
                parents[sweep_dir] = _import_sweep(client, experiment_id, sweep_dir, job_dir, record)
            outcome = _import_job(client, experiment_id, job_dir, record, job, parents.get(sweep_dir))
            setattr(summary, outcome, getattr(summary, outcome) + 1)
    return summary


def _find_run(client: Any, experiment_id: str, tags: Mapping[str, str]) -> Optional[Any]:
    """The active run carrying all these tags. Only the first (a hex digest) goes into the filter
    string; the others (paths) are compared here."""
    (first_key, first_value), *rest = tags.items()
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{first_key}` = '{first_value}'",
                              max_results=1000)
    matching = [run for run in runs if all(run.data.tags.get(k) == v for k, v in rest)]
    return min(matching, key=lambda run: run.info.start_time or 0) if matching else None


def _import_job(client: Any, experiment_id: str, job_dir: Path, record: Mapping[str, Any], job: str,
                parent_id: Optional[str]) -> str:
    """"created", "updated" or "unchanged"."""
    identity = {TAG + "job_hash": job, TAG + "job_dir": _recorded_dir(job_dir, record)[:MAX_TAG_VALUE]}
    digest = record_digest(record)
    run = _find_run(client, experiment_id, identity)
    if run is not None and run.data.tags.get(TAG + "record_sha256") == digest:
        return "unchanged"
    outcome = "updated" if run is not None else "created"
    if run is None:
        tags = {**identity, TAG + "kind": "job"}
        run = client.create_run(experiment_id, start_time=_millis(record.get("started_at")), tags=tags,
                                run_name=job_dir.name)
    run_id = run.info.run_id
    revision = int(run.data.tags.get(TAG + "revision", "0")) + 1
    tags = {**job_tags(record), TAG + "revision": str(revision)}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    conflicts = _log(client, run, job_params(record), job_metrics(record), tags, revision,
                     _millis(record.get("finished_at")))
    if conflicts:
        log.warning("mlflow: %s: params differ from the run's first import, kept the first: %s",
                    job_dir.name, ", ".join(conflicts))
    for path in job_artifacts(job_dir, record):
        client.log_artifact(run_id, str(path))
    _set_status(client, run_id, record, job_dir.name)
    client.set_tag(run_id, TAG + "record_sha256", digest)  # last: an import cut short is redone next time
    return outcome


def _log(client: Any, run: Any, params: Mapping[str, str], metrics: Mapping[str, float], tags: Mapping[str, str],
         step: int, timestamp: Optional[int]) -> list[str]:
    """Log params (those not yet logged), metrics at `step` (the import revision: the latest
    revision is what the UI shows) and tags; drop the importer's tags the record no longer has.
    Returns the params whose logged value differs (MLflow params cannot change): kept, listed in a tag."""
    from mlflow.entities import Metric, Param, RunTag

    logged = run.data.params
    conflicts = sorted(key for key, value in params.items() if key in logged and logged[key] != value)
    new_params = [Param(key, value) for key, value in params.items() if key not in logged]
    tags = dict(tags)
    if conflicts:
        tags[TAG + "param_conflicts"] = ",".join(conflicts)[:MAX_TAG_VALUE]
    when = timestamp or int(dt.datetime.now().timestamp() * 1000)
    metric_list = [Metric(key, value, when, step) for key, value in metrics.items()]
    tag_list = [RunTag(key, value) for key, value in tags.items()]
    run_id = run.info.run_id
    for start in range(0, max(len(new_params), len(tag_list), 1), BATCH):
        client.log_batch(run_id, params=new_params[start:start + BATCH], tags=tag_list[start:start + BATCH])
    for start in range(0, len(metric_list), 1000):
        client.log_batch(run_id, metrics=metric_list[start:start + 1000])
    for key in run.data.tags:
        if key.startswith(TAG) and key not in tags and key not in KEPT_TAGS:
            client.delete_tag(run_id, key)
    return conflicts


def _set_status(client: Any, run_id: str, record: Mapping[str, Any], name: str) -> None:
    status = RUN_STATUS.get(str(record.get("status")), "FAILED")
    client.update_run(run_id, status=status, name=name)
    if status != "RUNNING":
        client.set_terminated(run_id, status, _millis(record.get("finished_at")))


def _import_sweep(client: Any, experiment_id: str, sweep_dir: Path, job_dir: Path, record: Mapping[str, Any]) -> str:
    """The sweep's parent run (created once), holding <sweep>/report/ when that has changed."""
    recorded = str(Path(_recorded_dir(job_dir, record)).parent)
    key = hashlib.sha256(recorded.encode()).hexdigest()[:16]  # a path cannot safely go into a filter string
    identity = {TAG + "sweep_key": key, TAG + "sweep_dir": recorded[:MAX_TAG_VALUE]}
    run = _find_run(client, experiment_id, identity)
    if run is None:
        run = client.create_run(experiment_id, tags={**identity, TAG + "kind": "sweep"}, run_name=sweep_dir.name)
        client.set_terminated(run.info.run_id, "FINISHED")
    report = sorted(p for p in (sweep_dir / REPORT_DIR).glob("*") if p.is_file() and not p.name.startswith("."))
    if report:
        digest = _files_digest(report)
        if run.data.tags.get(TAG + "report_sha256") != digest:
            for path in report:
                client.log_artifact(run.info.run_id, str(path), REPORT_DIR)
            client.set_tag(run.info.run_id, TAG + "report_sha256", digest)
    return run.info.run_id


# -- command line ------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpueval mlflow", description="Import runs and sweeps (their results.json) into MLflow: one run "
        "per job, updated in place on re-import.")
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories (searched recursively)")
    parser.add_argument("--tracking-uri", help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                        f"{DEFAULT_TRACKING_URI}); a server: http://host:5000")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help=f"MLflow experiment, created if needed (default {DEFAULT_EXPERIMENT})")
    return parser


def _error(message: str) -> int:
    print(f"cpueval mlflow: error: {message}", file=sys.stderr, flush=True)
    return 2


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        import mlflow  # noqa: F401  (checked first: the most likely thing to be missing)
    except ImportError:
        return _error(f"mlflow is not installed: {INSTALL_HINT}")
    from mlflow.exceptions import MlflowException

    try:
        summary = import_dirs(args.dirs, args.tracking_uri, args.experiment)
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        return _error(str(err))
    except MlflowException as err:
        return _error(f"{resolve_tracking_uri(args.tracking_uri)}: {err.message.splitlines()[0]}")
    print(summary.line(), flush=True)
    return 0


# -- at the end of a sweep (Hydra callback) --------------------------------------------------------
try:  # hydra.experimental.callback is part of hydra-core >= 1.1
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]


class MlflowCallback(Callback):  # type: ignore[misc]
    """Imports the sweep into MLflow once all its jobs are done, in the launching process (the
    only writer). Never fails the sweep: an import error is logged with the command that redoes it."""

    def __init__(self, tracking_uri: Optional[str] = None, experiment: str = DEFAULT_EXPERIMENT) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            log.error("mlflow is not installed: the sweep runs but is not imported (%s)", INSTALL_HINT)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        _refresh_report(sweep_dir, config)
        try:
            summary = import_dirs([sweep_dir], self.tracking_uri, self.experiment)
            log.info("%s", summary.line())
        except Exception as err:  # the sweep's results stand; the import can be redone by hand
            log.error("mlflow import failed (%s: %s); redo it: cpueval mlflow %s%s", type(err).__name__,
                      err if not isinstance(err, ImportError) else INSTALL_HINT, sweep_dir,
                      f" --tracking-uri {self.tracking_uri}" if self.tracking_uri else "")


def _refresh_report(sweep_dir: Path, config: Any) -> None:
    """Hydra calls end-of-sweep callbacks in reverse order, so the report callback (listed first)
    writes this launch's report after this one: write it now if it is older than a record."""
    settings = (config.hydra.get("callbacks") or {}).get("sweep_report")
    if not settings or not settings.get("report", True):
        return
    out = sweep_dir / str(settings.get("report_subdir", REPORT_DIR))
    newest = max((p.stat().st_mtime for p in sweep_dir.rglob(RESULTS_FILE) if ".submitit" not in p.parts),
                 default=None)
    if newest is None or ((out / "report.md").is_file() and (out / "report.md").stat().st_mtime >= newest):
        return
    from cpueval import report

    try:
        report.write_report([sweep_dir], out, settings.get("baseline") or None,  # None: the reference plug-ins
                            float(settings.get("gate", report.DEFAULT_GATE)))
    except Exception as err:  # the import goes on without it; the report callback will try again
        log.error("report for mlflow failed (%s: %s)", type(err).__name__, err)
