"""`cpueval ...` run inside the test process: what the console script does (cpueval.app.main, Hydra's
own entry: composition, run and sweep directories, job logging, callbacks, the basic and joblib
launchers, exit codes), without a new Python that imports torch and transformers again (~6 s each).

A subprocess proves more only where the process itself is under test (the console script's start-up
imports, a launcher killed mid-sweep, plug-ins found from outside the package), and those tests keep one.

    outcome = run_cpueval(["-m", "hydra.sweep.dir=...", "precision=fp32,bf16"])
    outcome.code, outcome.stdout, outcome.stderr, outcome.log

The process state a run changes is put back afterwards: sys.argv, environment variables given in
`env`, the working directory, the handlers Hydra's job logging adds, Hydra's global state, the
plug-in config dirs a `hydra.searchpath=` adds, and torch's thread count.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

# Loggers Hydra's job logging (conf/hydra/job_logging) and cpueval configure.
_LOGGERS = ("", "hydra", "py.warnings", "transformers", "cpueval")


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def log(self) -> str:
        return self.stdout + self.stderr

    @property
    def returncode(self) -> int:  # the name subprocess.CompletedProcess uses
        return self.code


def run_cpueval(argv: Sequence[str], env: Optional[Mapping[str, Optional[str]]] = None,
                cwd: Optional[Path] = None) -> Outcome:
    """`cpueval <argv>` in this process; `env` sets (or, with None, removes) variables for the run only."""
    from hydra.core.global_hydra import GlobalHydra

    from cpueval import app

    def main() -> None:
        sys.argv = ["cpueval", *argv]
        GlobalHydra.instance().clear()
        try:
            app.main()
        finally:
            GlobalHydra.instance().clear()

    return _captured(main, env, cwd)


def run_job_body(overrides: Sequence[str], run_dir: Path) -> Outcome:
    """One job's body (cpueval.app._run_job) on a config composed once through Hydra's compose API,
    logging to stderr as Hydra's job logging does: the same error path as `cpueval <overrides>`,
    without the second composition and run-directory set-up Hydra's entry makes."""
    from cpueval import app

    cfg = compose_config([o for o in overrides if not o.startswith("hydra.")])

    def body() -> None:
        logging.getLogger().addHandler(logging.StreamHandler(sys.stderr))
        logging.getLogger().setLevel(logging.INFO)
        app._run_job(cfg, run_dir, multirun=False)

    return _captured(body, None, None)


def compose_config(overrides: Sequence[str], return_hydra_config: bool = False) -> Any:
    """The job config `cpueval <overrides>` would run, through Hydra's compose API (no run directory);
    with return_hydra_config, its `hydra` node too."""
    from hydra import compose, initialize_config_dir

    from cpueval import identity, plugins
    from cpueval.config import register_configs

    register_configs()
    identity.register_resolvers()
    with initialize_config_dir(config_dir=str(plugins.CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def _captured(run: Callable[[], None], env: Optional[Mapping[str, Optional[str]]], cwd: Optional[Path]) -> Outcome:
    """run() with stdout/stderr captured and the process state put back; SystemExit becomes the exit code."""
    out, err = io.StringIO(), io.StringIO()
    with _restored_process_state(env, cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run()
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    outcome = Outcome(code, out.getvalue(), err.getvalue())
    print(outcome.stdout[-3000:], outcome.stderr[-6000:])  # shown when a test fails
    return outcome


@contextlib.contextmanager
def _restored_process_state(env: Optional[Mapping[str, Optional[str]]], cwd: Optional[Path]) -> Iterator[None]:
    import torch

    from cpueval import plugins

    argv, workdir, plugin_dirs = list(sys.argv), os.getcwd(), list(plugins.search_dirs()[1:])
    environ = {name: os.environ.get(name) for name in (env or {})}
    threads = torch.get_num_threads()
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    before = {lg.name: (list(lg.handlers), lg.level, lg.propagate) for lg in loggers}
    try:
        _set_env(env or {})
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        sys.argv = argv
        os.chdir(workdir)
        if plugins.search_dirs()[1:] != plugin_dirs:  # `hydra.searchpath=` added plug-in dirs for this run only
            plugins.forget_search_dirs(keep=plugin_dirs)
        _set_env(environ)
        for logger in loggers:  # Hydra's handlers write to this run's captured streams
            added = [h for h in logger.handlers if h not in before[logger.name][0]]
            for handler in added:
                handler.close()
            logger.handlers[:], logger.level, logger.propagate = before[logger.name]
        torch.set_num_threads(threads)  # (the inter-op count can be set once per process only)


def _set_env(values: Mapping[str, Optional[str]]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
