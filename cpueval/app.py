"""Command-line entry: `cpueval [group=option ...] [key=value ...] [--multirun]` (a Hydra app),
`cpueval report DIR...` (aggregate results of runs and sweeps), `cpueval plugins` (what can run here)
and `cpueval mlflow DIR...` (import runs and sweeps into MLflow)."""

from __future__ import annotations

import importlib
import logging
import string
import sys
import warnings
from pathlib import Path
from typing import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cpueval import identity, lazy_imports, plugins, resume, signals, sweep_callback
from cpueval.errors import UserError
from cpueval.launcher_errors import launcher_errors_in_one_line

CONF_DIR = plugins.CONF_DIR
log = logging.getLogger("cpueval")

# conf/hydra/launcher/joblib.yaml replaces the joblib plugin's config of the same name on purpose (it
# lists every field); Hydra warns about that match in the launching process and again in every worker,
# which imports this module to run the task function.
warnings.filterwarnings("ignore", message=r"(?s).*is validated against ConfigStore schema with the same name",
                        category=UserWarning)


def run_job(cfg: DictConfig) -> str:
    """The Hydra task function: one evaluation in this job's output directory. Returns its status.

    A job whose directory already holds an ok record for the same job config, or a refusal by
    this same installation, is skipped (before anything heavy is imported) unless
    runtime.force=true. In a multirun a failing job records why and returns, so the other jobs
    still run; the launch's exit code reports it afterwards (cpueval.sweep_callback). A single run
    exits non-zero with a one-line error.

    Ctrl-C, SIGTERM (Slurm requeue/preemption/scancel) and SIGUSR2 (submitit: time limit near or
    preempted) record the run as `interrupted` and exit (128 + signal) without returning a result;
    after SIGUSR2, submitit's own handler then requeues the job. Handlers are restored on return."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    logging.captureWarnings(True)  # third-party warnings to the job log (logger py.warnings), not the console
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        with signals.interrupt_on_signals():
            return _run_job(cfg, run_dir, multirun)
    except KeyboardInterrupt as err:  # Ctrl-C, or signals.Interrupted from SIGTERM/SIGUSR2
        log.error("interrupted: %s (%s)", run_dir, str(err) or "Ctrl-C")
        signals.exit_interrupted(err)
        raise  # not reached: exit_interrupted exits


def _run_job(cfg: DictConfig, run_dir: Path, multirun: bool) -> str:
    done = None if cfg.runtime.force else resume.done_record(cfg, run_dir)
    if done is not None and done.status == "ok":
        log.info("skipped (done): %s (runtime.force=true re-runs it)", run_dir)
        return "skipped"
    if done is not None:
        log.warning("skipped (refused before, same host and packages): %s: %s (runtime.force=true re-runs it)",
                    run_dir, done.error.message if done.error else "")
        if multirun:
            return "refused"
        sys.exit(3)  # as when it was refused (cpueval.errors.Refused.exit_code)
    try:
        with resume.job_lock(run_dir):
            return _evaluate(cfg, run_dir, multirun)
    except resume.Busy:
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
        resume.write_failure(cfg, run_dir, err)
        return "failed"
    print(render_summary(record), flush=True)
    return record.status


hydra_main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(run_job)

SUBCOMMANDS = {
    "report": "cpueval.report",
    "plugins": "cpueval.plugin_table",
    "mlflow": "cpueval.mlflow_import",
}


def print_help(overrides: Sequence[str]) -> int:
    """`cpueval --help [overrides]`: conf/config.yaml's hydra.help template with the composed config.
    Hydra's own --help would also list every ConfigStore entry, which costs seconds and lists the
    internal `<name>_schema` entries; `--hydra-help` still shows Hydra's."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from cpueval.launcher_errors import config_error

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="cpueval"):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    except Exception as err:
        message = config_error(err)
        if message is None:
            raise
        print(f"cpueval: error: {message}", file=sys.stderr)
        return 2
    template = str(cfg.hydra.help.template)
    with open_dict(cfg):
        del cfg["hydra"]
    print(string.Template(template).safe_substitute(CONFIG=OmegaConf.to_yaml(cfg)))
    return 0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        sys.exit(importlib.import_module(SUBCOMMANDS[sys.argv[1]]).main(sys.argv[2:]))
    lazy_imports.defer_imports()
    from cpueval.config import register_configs

    plugins.add_search_dirs(plugins.search_dirs_from_argv(sys.argv[1:]))
    register_configs()
    identity.register_resolvers()
    if {"--help", "-h"} & set(sys.argv[1:]) and not any(a.startswith("-") and a not in ("--help", "-h")
                                                         for a in sys.argv[1:]):
        sys.exit(print_help([a for a in sys.argv[1:] if a not in ("--help", "-h")]))
    sweep_callback.forget_last_launch()
    with launcher_errors_in_one_line():
        hydra_main()
    # 1 when a job of this multirun launch failed, 3 when jobs were only refused (0 for single runs,
    # which exit from run_job on error).
    sys.exit(sweep_callback.launch_exit_code())


if __name__ == "__main__":
    main()
