"""Command-line entry: `cpueval [group=option ...] [key=value ...] [--multirun]` (a Hydra app)
and `cpueval report DIR...` (aggregate results of runs and sweeps)."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cpueval import sweep
from cpueval.config import register_configs
from cpueval.errors import UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("cpueval")


def run_job(cfg: DictConfig) -> str:
    """The Hydra task function: one evaluation in this job's output directory. Returns its status.

    A job whose directory already holds an ok record for the same job config, or a refusal by
    this same installation, is skipped (before anything heavy is imported) unless
    runtime.force=true. In a multirun a failing job records why and returns, so the other jobs
    still run; the launch's exit code reports it afterwards (cpueval.sweep.SweepCallback). A single run exits non-zero with a one-line error.

    Ctrl-C, SIGTERM (Slurm requeue/preemption/scancel) and SIGUSR2 (submitit: time limit near or
    preempted) record the run as `interrupted` and exit (128 + signal) without returning a result;
    after SIGUSR2, submitit's own handler then requeues the job. Handlers are restored on return."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        with sweep.interrupt_on_signals():
            return _run_job(cfg, run_dir, multirun)
    except KeyboardInterrupt as err:  # Ctrl-C, or sweep.Interrupted from SIGTERM/SIGUSR2
        log.error("interrupted: %s (%s)", run_dir, str(err) or "Ctrl-C")
        sweep.exit_interrupted(err)
        raise  # not reached: exit_interrupted exits


def _run_job(cfg: DictConfig, run_dir: Path, multirun: bool) -> str:
    done = None if cfg.runtime.force else sweep.done_record(cfg, run_dir)
    if done is not None and done["status"] == "ok":
        log.info("skipped (done): %s (runtime.force=true re-runs it)", run_dir)
        return "skipped"
    if done is not None:
        log.warning("skipped (refused before, same host and packages): %s: %s (runtime.force=true re-runs it)",
                    run_dir, (done.get("error") or {}).get("message", ""))
        if multirun:
            return "refused"
        sys.exit(3)  # as when it was refused (cpueval.errors.Refused.exit_code)
    try:
        with sweep.job_lock(run_dir):
            return _evaluate(cfg, run_dir, multirun)
    except sweep.Busy:
        log.warning("skipped (running in another process): %s", run_dir)
        if multirun:
            return "busy"
        sys.exit(1)


def _evaluate(cfg: DictConfig, run_dir: Path, multirun: bool) -> str:
    from cpueval.pipeline import execute
    from cpueval.summary import render_summary

    try:
        record = execute(cfg, run_dir)
    except UserError as err:
        log.error("error: %s", err)
        if multirun:
            return "refused" if err.exit_code == 3 else "failed"
        sys.exit(err.exit_code)
    except Exception as err:
        if not multirun:
            raise
        # Hydra would re-raise this after the batch and skip the report: record it and go on.
        log.exception("job failed: %s: %s", type(err).__name__, err)
        sweep.write_failure(cfg, run_dir, err)
        return "failed"
    print(render_summary(record), flush=True)
    return record["status"]


hydra_main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(run_job)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        from cpueval.report import main as report_main

        sys.exit(report_main(sys.argv[2:]))
    register_configs()
    sweep.register_resolvers()
    with _launcher_errors_in_one_line():
        hydra_main()
    # Non-zero when a job of this multirun launch failed or was refused (0 for single runs, which
    # exit from run_job on error).
    sys.exit(sweep.launch_exit_code())


# -- launcher errors --------------------------------------------------------------------------------
@contextlib.contextmanager
def _launcher_errors_in_one_line() -> Iterator[None]:
    """Errors raised by the launcher (no Slurm here, sbatch refusing the array, a Slurm job that
    ended without a result) become one `cpueval: error:` line and a non-zero exit, no traceback.

    They are raised outside run_job, where Hydra's run_and_report would print a trimmed traceback
    and exit 1; this wraps what run_and_report runs (hydra-core 1.3) and leaves other errors to it.
    HYDRA_FULL_ERROR=1 still shows the full traceback."""
    import os

    from hydra._internal import utils as hydra_utils

    original = getattr(hydra_utils, "run_and_report", None)
    if original is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
        yield
        return

    def run_and_report(func: Any) -> Any:
        def guarded() -> Any:
            try:
                return func()
            except Exception as err:
                explained = launcher_error(err)
                if explained is None:
                    raise
                message, code = explained
                print(f"cpueval: error: {message}", file=sys.stderr, flush=True)
                raise SystemExit(code) from None

        return original(guarded)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


# sbatch's reason -> the launcher setting that causes it
_SBATCH_CAUSES = (("partition", ("partition",)), ("memory", ("mem_gb",)), ("processors", ("cpus_per_task",)),
                  ("cpu", ("cpus_per_task",)), ("time limit", ("timeout_min",)),
                  ("node configuration", ("cpus_per_task", "mem_gb")))


def launcher_error(err: BaseException) -> Optional[tuple[str, int]]:
    """(one-line message, exit code) for a launcher error a user can act on, else None."""
    text = str(err)
    if isinstance(err, RuntimeError) and 'Could not detect "srun"' in text:
        return ("hydra/launcher=slurm needs Slurm, but there is no srun/sbatch on PATH (not a Slurm login "
                "node?): run it where Slurm is, or use hydra/launcher=local (submitit on this machine) or "
                "drop hydra/launcher for the default launcher", 2)
    try:
        from submitit.core.utils import FailedJobError, UncompletedJobError
    except ImportError:  # pragma: no cover - submitit not installed: not a submitit error either
        return None
    cause = err.__cause__
    from_sbatch = "sbatch:" in text or "sbatch" in str(getattr(cause, "cmd", ""))
    if isinstance(err, FailedJobError) and from_sbatch:
        errors = [line.split("error:", 1)[1].strip() for line in text.splitlines() if "error:" in line]
        reason = next((e for e in errors if not e.startswith("Batch job submission failed")), None) \
            or (errors[0].split(":", 1)[-1].strip() if errors else text.strip().splitlines()[-1])
        keys = next((k for word, k in _SBATCH_CAUSES if word in reason.lower()),
                    ("partition", "cpus_per_task", "mem_gb", "timeout_min"))
        return f"Slurm rejected the job array: {reason} ({_launcher_settings(keys)})", 2
    if isinstance(err, UncompletedJobError):
        found = re.search(r"Job (\S+) .*?\(state: ([^)]*)\)", text, re.S)
        what = f"Slurm job {found[1]} ended without a result (state: {found[2]})" if found \
            else f"a Slurm job ended without a result: {text.strip().splitlines()[0] if text.strip() else type(err).__name__}"
        return (f"{what}; re-run the same command to resume (jobs already ok are skipped); other array "
                "tasks may still be running (squeue --me)", 1)
    return None


def _launcher_settings(keys: tuple[str, ...]) -> str:
    config = sweep.launch_config()
    launcher = config.hydra.launcher if config is not None else {}
    return ", ".join(f"hydra.launcher.{key}={_yaml_value(launcher.get(key))}" if key in launcher
                     else f"hydra.launcher.{key}" for key in keys)


def _yaml_value(value: Any) -> str:
    return "null" if value is None else str(value)


if __name__ == "__main__":
    main()
