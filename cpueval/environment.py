"""What machine and software a run actually used: CPU model, ISA flags, cores, versions, git commit."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional


# /proc/cpuinfo flag -> the name we report. Order is the order shown to users.
ISA_FLAGS = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512dq": "avx512dq",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx_vnni": "avx_vnni",
    "avx_ne_convert": "avx_ne_convert",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "amx_tile": "amx_tile",
}


@dataclass(frozen=True)
class Capabilities:
    """The CPU features this process may use (plug-ins declare which of them make them native)."""

    cpu_model: str
    flags: frozenset[str] = field(default_factory=frozenset)
    torch_cpu_capability: str = ""

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def summary(self) -> str:
        shown = [name for name in ISA_FLAGS.values() if name in self.flags]
        return f"{self.cpu_model} [{', '.join(shown) or 'no AVX2'}] torch={self.torch_cpu_capability}"


def _read_cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or "unknown", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("unknown", "", platform.processor()):
            model = value.strip()
        elif key == "flags":
            flags = set(value.split())
            break
    return model, flags


@lru_cache(maxsize=1)
def detect_capabilities() -> Capabilities:
    import torch  # here, not at module level: subcommands that read records never load torch

    model, raw_flags = _read_cpuinfo()
    flags = frozenset(name for raw, name in ISA_FLAGS.items() if raw in raw_flags)
    return Capabilities(
        cpu_model=model,
        flags=flags,
        torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
    )


def usable_cores() -> int:
    """Cores this process may run on (affinity / cgroup-aware), not the host's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def package_version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(path: Optional[Path] = None) -> Optional[str]:
    """The project's commit (with a '-dirty' suffix if the tree has changes), or None outside git."""
    where = str(path or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "-C", where, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def slurm_context() -> Optional[dict[str, Any]]:
    """Slurm job facts when running under Slurm: job id, array job id/index, node, cores granted,
    restart count (0 on the first run; n after n requeues: preemption, time limit, scontrol requeue)."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    keys = {
        "job_id": "SLURM_JOB_ID",
        "array_job_id": "SLURM_ARRAY_JOB_ID",
        "array_task_id": "SLURM_ARRAY_TASK_ID",
        "node": "SLURMD_NODENAME",
        "cpus_per_task": "SLURM_CPUS_PER_TASK",
        "restart_count": "SLURM_RESTART_COUNT",
        "partition": "SLURM_JOB_PARTITION",
    }
    context: dict[str, Any] = {k: os.environ.get(v) for k, v in keys.items()}
    for key in ("array_task_id", "cpus_per_task", "restart_count"):
        value = context[key]
        context[key] = int(value) if value and value.isdigit() else value
    context["restart_count"] = context["restart_count"] or 0  # unset on the first run
    return context


def core_packages() -> list[str]:
    """cpueval and the packages it always depends on (from its installed metadata, extras left out)."""
    try:
        requires = importlib.metadata.requires("cpueval") or []
    except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
        requires = []
    names = [re.split(r"[ ;<>=!~\[]", req, maxsplit=1)[0] for req in requires if "extra ==" not in req]
    return ["cpueval", *names]


def describe_environment(extra_packages: Iterable[str] = ()) -> dict[str, Any]:
    """The environment block of results.json: the CPU, and the versions of cpueval's own dependencies
    plus `extra_packages` (what the job's plug-ins require; None where not installed)."""
    caps = detect_capabilities()
    packages = dict.fromkeys([*core_packages(), *extra_packages])
    return {
        "cpu_model": caps.cpu_model,
        "isa_flags": sorted(caps.flags),
        "torch_cpu_capability": caps.torch_cpu_capability,
        "machine": platform.machine(),
        "host": platform.node(),
        "logical_cpus": os.cpu_count(),
        "usable_cores": usable_cores(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in packages},
        "git_commit": git_commit(),
        "slurm": slurm_context(),
    }
