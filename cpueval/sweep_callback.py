"""The Hydra callback of every multirun launch: it runs where the sweep was launched (not on the
workers), notes the launch time, and at the end logs what ran, what failed and why, sets the command's
exit code, and writes the sweep's report. Registered in conf/hydra/callbacks/sweep_report.yaml."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from cpueval import records, submitit_patch
from cpueval.records import RESULTS_FILE, RunRecord

log = logging.getLogger("cpueval")

_launch_not_ok: list[str] = []  # statuses of the jobs of the last launch's sweep dir that are not ok
_launch_config: list[DictConfig] = []  # the config of the multirun launch in progress (SweepCallback)


def launch_config() -> Optional[DictConfig]:
    """The config of the multirun launched in this process (for launcher error messages), or None."""
    return _launch_config[0] if _launch_config else None


REFUSED_EXIT_CODE = 3  # as a single refused run (cpueval.errors.Refused.exit_code)


def forget_last_launch() -> None:
    """A new command starts: a single run after a multirun in the same process exits by its own outcome."""
    _launch_not_ok.clear()


def launch_exit_code() -> int:
    """The exit code of the last multirun launch in this process, from its sweep dir: 0 when every job
    is ok, 3 when the others are refusals only (a combination this machine or installation cannot run,
    expected in a grid: the nightly wrapper treats it as success), 1 when a job failed, was interrupted
    or left no readable record."""
    if not _launch_not_ok:
        return 0
    return REFUSED_EXIT_CODE if set(_launch_not_ok) == {"refused"} else 1


def scan_jobs(sweep_dir: Path) -> list[tuple[Path, Optional[RunRecord]]]:
    """(job dir, record or None if unreadable) for every results.json under sweep_dir, sorted by path."""
    return [(path.parent, records.read_record(path.parent)) for path in sorted(Path(sweep_dir).rglob(RESULTS_FILE))
            if ".submitit" not in path.parts]


def summarize_launch(sweep_dir: Path, launch_start: dt.datetime) -> dict[str, Any]:
    """Counts for the sweep dir, and which jobs ran in this launch (started at or after its start).

    A job skipped as done keeps its earlier record, so it counts as done, not as run. Start times are in
    milliseconds, so a job that the previous launch ran in this launch's first second counts as done."""
    floor = launch_start.replace(microsecond=launch_start.microsecond // 1000 * 1000)
    ran, done, not_ok, statuses = [], [], [], {}
    for job_dir, record in scan_jobs(sweep_dir):
        started = _parse_time(record.started_at if record else None)
        this_launch = started is not None and started >= floor
        status = record.status if record else "unreadable"
        statuses[status] = statuses.get(status, 0) + 1
        (ran if this_launch else done).append(job_dir)
        if status != "ok":
            not_ok.append((job_dir, status, record.reason if record else "", this_launch))
    return {"ran": ran, "done_before": done, "not_ok": not_ok, "statuses": statuses}


def _parse_time(text: Any) -> Optional[dt.datetime]:
    try:
        return dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None


try:  # hydra.experimental.callback is part of hydra-core >= 1.1
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[misc,assignment]


class SweepCallback(Callback):  # type: ignore[misc]
    """Runs where the sweep was launched (not on the workers): notes the launch time, then at the
    end logs what ran, what failed and why, sets the exit code, and writes the sweep's report and logs its
    verdict lines (the fastest configuration passing the accuracy gate, cpueval/verdict.py)."""

    def __init__(self, report: bool = True, baseline: Optional[str] = None, gate: float = 0.99,
                 report_subdir: str = "report") -> None:
        self.report = report
        self.baseline = baseline
        self.gate = gate
        self.report_subdir = report_subdir
        self.started = dt.datetime.now(dt.timezone.utc)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = dt.datetime.now(dt.timezone.utc)
        _launch_not_ok.clear()
        _launch_config[:] = [config]
        submitit_patch.skip_done_before_submit()  # after Hydra's plugin scan, which re-executes the plugin modules

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        summary = summarize_launch(sweep_dir, self.started)
        # The sweep dir is the unit: a job refused before and skipped now still counts.
        _launch_not_ok[:] = [status for _, status, _, _ in summary["not_ok"]]
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
            for entry in json.loads((out.parent / report.VERDICT_FILE).read_text(encoding="utf-8")):
                log.info("verdict: %s", entry["line"])
            log.info("report: %s", out)
        except Exception as err:  # the jobs' results stand; `cpueval report` can be re-run by hand
            log.error("report failed (%s: %s); re-run: cpueval report %s", type(err).__name__, err, sweep_dir)
