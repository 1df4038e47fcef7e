"""Errors raised outside the job (a config that does not compose: unknown option, typo, wrong type;
no Slurm on this machine, sbatch refusing the job array, a Slurm job that ended without a result),
turned into one `cpueval: error:` line."""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import re
import sys
from typing import Any, Iterator, Optional

from cpueval import sweep_callback


@contextlib.contextmanager
def launcher_errors_in_one_line() -> Iterator[None]:
    """Errors raised by the launcher (no Slurm here, sbatch refusing the array, a Slurm job that
    ended without a result) become one `cpueval: error:` line and a non-zero exit, no traceback.

    They are raised outside run_job, where Hydra's run_and_report would print a trimmed traceback
    and exit 1; this wraps what run_and_report runs (hydra-core 1.3) and leaves other errors to it.
    HYDRA_FULL_ERROR=1 still shows the full traceback."""
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


def config_error(err: BaseException) -> Optional[str]:
    """One line for a config that does not compose (Hydra's own message spans several lines, lists
    the internal `<name>_schema` entries as options and suggests `+key` for what is usually a typo)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(err, MissingConfigException) and err.options is not None:
        group, _, wanted = str(err.missing_cfg_file).rpartition("/")
        options = [o for o in err.options if not o.endswith("_schema")]
        close = difflib.get_close_matches(wanted, options, n=1)
        hint = f"did you mean {group}={close[0]}? " if close else ""
        return f"Could not find '{err.missing_cfg_file}': {hint}{group} is one of {', '.join(options)}"
    if isinstance(err, OverrideParseException):
        return (f"cannot parse the override {err.override!r}: {err.message.splitlines()[0]} (syntax: "
                f"https://hydra.cc/docs/advanced/override_grammar/basic; quote values with brackets or spaces)")
    if not isinstance(err, ConfigCompositionException):
        return None
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and not line.startswith((" ", "\t"))]
    lines = [line.rstrip(".") for line in lines if not line.startswith(("To append", "Set the environment"))]
    cause = err.__cause__
    if cause is not None and str(cause).strip():
        lines.append(str(cause).strip().splitlines()[0])
    return "; ".join(dict.fromkeys(lines)) + " (`cpueval --cfg job` prints every key and its value)"


def launcher_error(err: BaseException) -> Optional[tuple[str, int]]:
    """(one-line message, exit code) for a config or launcher error a user can act on, else None."""
    text = str(err)
    composing = config_error(err)
    if composing is not None:
        return composing, 2
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                                                  errno.ENOTDIR, errno.EEXIST):
        # Hydra creates the run (or sweep) directory and its log before the job starts
        return (f"hydra.run.dir (hydra.sweep.dir for -m): cannot create {err.filename or 'the output directory'}: "
                f"{err.strerror or err}; set it to a directory you can write, e.g. hydra.run.dir=/tmp/cpueval-run", 2)
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
    config = sweep_callback.launch_config()
    launcher = config.hydra.launcher if config is not None else {}
    return ", ".join(f"hydra.launcher.{key}={_yaml_value(launcher.get(key))}" if key in launcher
                     else f"hydra.launcher.{key}" for key in keys)


def _yaml_value(value: Any) -> str:
    return "null" if value is None else str(value)
