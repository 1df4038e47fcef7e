"""Command-line entry: `cpueval [group=option ...] [key=value ...] [--multirun]` (a Hydra app)
and `cpueval report DIR...` (aggregate results of runs and sweeps)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cpueval.config import register_configs
from cpueval.errors import UserError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("cpueval")


def run_job(cfg: DictConfig) -> str:
    """The Hydra task function: one evaluation in this job's output directory. Returns its status."""
    from cpueval.pipeline import execute
    from cpueval.summary import render_summary

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        record = execute(cfg, run_dir)
    except UserError as err:
        log.error("error: %s", err)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return "refused" if err.exit_code == 3 else "failed"
        sys.exit(err.exit_code)
    print(render_summary(record), flush=True)
    return record["status"]


hydra_main = hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(run_job)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "report":
        from cpueval.report import main as report_main

        sys.exit(report_main(sys.argv[2:]))
    register_configs()
    hydra_main()


if __name__ == "__main__":
    main()
