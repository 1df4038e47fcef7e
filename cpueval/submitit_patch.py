"""Re-launching a sweep through the submitit launchers submits only the jobs that are not done.

Upstream behaviour this changes (hydra-submitit-launcher 1.2.0, hydra-core 1.3): `BaseSubmititLauncher.launch`
submits one array task per job of the sweep, whatever its directory holds. Each finished job would
then only find its ok record and skip -- on a busy cluster that is a queue wait per finished job
(the resume problem of hydra#1407 / hydra#3328). Hydra refuses launcher plugins outside the
`hydra_plugins` package, hence a wrapper around the plugin's `launch` rather than a subclass.
tests/test_submitit_patch.py fails when the upstream method's signature or the attributes used here
change.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cpueval.resume import done_record

log = logging.getLogger("cpueval")
TESTED_WITH = "1.2.0"  # hydra-submitit-launcher


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
    launch.__wrapped_original__ = original  # type: ignore[attr-defined]
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
    status = "skipped" if record.status == "ok" else "refused"
    log.info("skipped (%s): %s", "done" if status == "skipped" else "refused before, same host and packages", run_dir)
    return JobReturn(overrides=list(overrides), working_dir=str(run_dir), task_name=str(config.hydra.job.name),
                     status=JobStatus.COMPLETED, _return_value=status)
