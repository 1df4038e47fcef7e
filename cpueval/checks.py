"""Checks of a job's settings against where it runs: settings that cannot apply to its sources,
thread counts above the usable cores, and operating-system errors a user fixes (space,
permissions, read-only paths), named with the setting whose path they hit."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from cpueval.config import DataConfig
from cpueval.errors import UserError
from cpueval.records import Threads


def inapplicable_settings(cfg: DictConfig) -> list[str]:
    """Settings that cannot apply to this job's sources: warned here and recorded as not applied (null)."""
    model, data = cfg.model, cfg.data
    unused = []
    if model.revision and Path(model.name_or_path).expanduser().is_dir():
        unused.append(f"model.revision={model.revision} (model.name_or_path={model.name_or_path} is a local directory)")
    if data.path:
        default_split = DataConfig.split
        unused += [f"data.{key}={data[key]} (data.path={data.path} is a local file)"
                   for key in ("revision", "subset") if data[key]]
        if data.split != default_split:
            unused.append(f"data.split={data.split} (data.path={data.path} is a local file: all its rows are evaluated)")
    return [f"{setting} does not apply and was not used; results.json records it as null" for setting in unused]


def oversubscription(threads: Threads) -> list[str]:
    """More threads than usable cores make each forward call slower, not faster: say so."""
    intra_key = threads.intra_op_source if threads.intra_op_source != "affinity" else "runtime.intra_op_threads"
    asked = {intra_key: threads.intra_op_threads, "runtime.inter_op_threads": threads.inter_op_threads}
    return [f"{key}={n} is more than the {threads.usable_cores} usable cores here: threads compete for cores and "
            f"timings suffer; use <= {threads.usable_cores} (or null)"
            for key, n in asked.items() if threads.usable_cores and n > threads.usable_cores]


# OS errors a user fixes (space, permissions, a read-only mount), and what to do about each
FIXABLE_OS_ERRORS = {errno.ENOSPC: "free disk space", errno.EDQUOT: "free space in your quota",
                     errno.EROFS: "use a writable location", errno.EACCES: "use a location you may write to",
                     errno.EPERM: "use a location you may write to",
                     errno.ENOTDIR: "a part of the path is a file, not a directory: use another path",
                     errno.EEXIST: "a file is in the way: use another path"}


def os_error_as_user_error(err: OSError, cfg: DictConfig, run_dir: Path) -> Optional[UserError]:
    """A fixable OS error as a UserError naming the setting whose path it hit; None for other errors."""
    if err.errno not in FIXABLE_OS_ERRORS:
        return None
    path = str(err.filename or run_dir)
    places = [("hydra.run.dir", run_dir), ("runtime.cache_dir", cfg.runtime.cache_dir),
              ("data.path", cfg.data.path), ("model.name_or_path", cfg.model.name_or_path)]
    setting = next((key for key, root in places if root and _is_within(path, str(root))), "hydra.run.dir")
    return UserError(f"{setting}: cannot use {path}: {err.strerror or err}; {FIXABLE_OS_ERRORS[err.errno]} "
                     f"or set {setting}=<another path>")


def _is_within(path: str, root: str) -> bool:
    path_, root_ = Path(path).expanduser().resolve(), Path(root).expanduser().resolve()
    return path_ == root_ or root_ in path_.parents
