"""One identity per job: the hash of its resolved config.

The same hash is the record's `config_hash`, the suffix of the job's directory
(`<sweep dir>/<readable overrides>__<hash>`, and of single-run directories), the test for
skip-if-done (recomputed from the config stored in results.json), the tag a tracking import keys runs
by, and, with the baseline's keys left out, what the report groups a row with its baseline by.

The keys below change neither what a job computes nor its numbers: they are left out of the hash,
and Hydra's `override_dirname.exclude_keys` (conf/config.yaml) must list them too (a test checks).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable

from omegaconf import DictConfig, ListConfig, OmegaConf

from cpueval.records import jsonable

HASH_CHARS = 8
NOT_IN_HASH = ("runtime.force", "runtime.progress", "runtime.cache_dir")
# Settings added after records existed: at their default they are left out of the hash, so earlier jobs keep
# their identity (and are skipped as done); any other value (a latency scenario, 2 instances) makes a new job.
HASHED_UNLESS_DEFAULT = {"runtime.scenario": "throughput", "runtime.instances": 1, "runtime.cores_per_instance": None}
# Longest readable part of a job directory name; the hash keeps truncated names distinct.
MAX_READABLE = 180  # + '__' + hash stays well under the 255-byte name limit


def job_config(cfg: Any, leave_out: Iterable[str] = ()) -> dict[str, Any]:
    """The job config as plain JSON data: resolved, without the `hydra` node, NOT_IN_HASH and `leave_out` keys.

    Accepts the full Hydra config (resolver `_root_`), the task function's config, or the plain
    dict stored in results.json. Top-level nodes are resolved one at a time so that resolving
    never touches `hydra` (whose sweep.subdir is what calls this)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        data = {k: _plain(cfg[k]) for k in cfg if k != "hydra"}
    else:
        data = {k: v for k, v in dict(cfg).items() if k != "hydra"}
    data = json.loads(json.dumps(jsonable(data), default=str))  # same form as results.json's copy
    for dotted in (*NOT_IN_HASH, *leave_out):
        drop(data, dotted)
    columns = data.get("data", {}).get("columns") if isinstance(data.get("data"), dict) else None
    if isinstance(columns, dict):  # unmapped canonical columns (null) are the default: same hash as before
        data["data"]["columns"] = {k: v for k, v in columns.items() if v is not None}
    for dotted, default in HASHED_UNLESS_DEFAULT.items():
        if lookup(data, dotted, default) == default:
            drop(data, dotted)
    return data


def lookup(data: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """The value at `a.b.c` in nested dicts, or `default`."""
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def drop(data: dict[str, Any], dotted: str) -> None:
    """Remove `a.b.c` from nested dicts, if present."""
    *parents, leaf = dotted.split(".")
    node: Any = data
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


def _plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return node


def digest(data: Any, chars: int = HASH_CHARS) -> str:
    """sha256 (first `chars` hex digits) of `data` as sorted-key compact JSON."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:chars]


def job_hash(cfg: Any, leave_out: Iterable[str] = ()) -> str:
    """The job's identity: digest of `job_config(cfg, leave_out)`."""
    return digest(job_config(cfg, leave_out))


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
