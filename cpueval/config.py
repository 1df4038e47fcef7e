"""Structured configs: the schema Hydra validates every composed config against.

Group schemas that differ per plug-in (task, mode, precision) are base dataclasses here; each
plug-in module subclasses them in its own file and exposes the subclass as module attribute
`SCHEMA`, which cpueval/plugins.py stores in Hydra's ConfigStore as `<group>/<name>_schema` for the
plug-in's yaml to extend. Adding a plug-in never edits this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from cpueval import plugins
from cpueval.modes.base import ModeConfig
from cpueval.precisions.base import PrecisionConfig
from cpueval.tasks.base import TaskConfig

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"


@dataclass
class ModelConfig:
    # Hub id ("bert-base-uncased"), local directory, or "builtin:tiny-bert" (random weights, built offline).
    name_or_path: str = MISSING
    revision: Optional[str] = None
    # Tokenizer id or path when it differs from the model's.
    tokenizer: Optional[str] = None
    # transformers attention kernel: "sdpa", "eager", or null for the library default.
    attn_implementation: Optional[str] = None
    trust_remote_code: bool = False


def canonical_columns() -> dict[str, None]:
    """Every task plug-in's canonical column names (required and optional), each mapped to None."""
    names: set[str] = set()
    for info in plugins.discover()["task"].values():
        task = info.load_class()
        names.update(getattr(task, "required_columns", ()), getattr(task, "optional_columns", ()))
    return dict.fromkeys(sorted(names))


@dataclass
class DataConfig:
    # Hub dataset name (e.g. "squad", "glue") with optional subset (e.g. "sst2") ...
    name: Optional[str] = None
    subset: Optional[str] = None
    # ... or a local file. format "auto" infers from the suffix and content.
    path: Optional[str] = None
    format: str = "auto"  # auto | squad | json | jsonl | csv | tsv | parquet | conll
    split: str = "validation"
    max_eval_samples: Optional[int] = None
    # canonical column name (the task's) -> the column name in this data set. Every task's canonical
    # names are declared (null: not renamed), so `data.columns.<name>=<column>` works without a `+`.
    columns: dict[str, Optional[str]] = field(default_factory=lambda: canonical_columns())
    revision: Optional[str] = None


class Scenario(str, Enum):
    """How requests reach the model (MLPerf's offline and single-stream scenarios)."""

    throughput = "throughput"  # every example at once, in length-sorted batches of runtime.batch_size
    latency = "latency"  # one request (batch size 1) at a time, in dataset order


@dataclass
class RuntimeConfig:
    batch_size: int = 16
    # None: the cores this job may use (SLURM_CPUS_PER_TASK under Slurm, else the affinity mask).
    intra_op_threads: Optional[int] = None
    inter_op_threads: Optional[int] = None
    seed: int = 42
    warmup_batches: int = 2
    progress: bool = True
    # Sort windows by length so each batch pads only to its own longest window.
    length_bucketing: bool = True
    # Pad each batch's length up to a multiple of this, so compiled/traced modes see few shapes.
    pad_to_multiple_of: int = 8
    # Compare outputs with eager fp32 on this many batches (0: off).
    parity_batches: int = 0
    # Where tokenized features are cached across runs and sweeps (null: no cache).
    cache_dir: Optional[str] = "${oc.env:CPUEVAL_CACHE,${oc.env:HOME}/.cache/cpueval}"
    # Re-run a job even if its directory already holds an ok result for the same config.
    force: bool = False
    # throughput: batches of batch_size, longest first. latency: one request (batch size 1) at a time,
    # in dataset order, with per-request percentiles.
    scenario: Scenario = Scenario.throughput
    # Worker processes, each pinned to its own cores with its own prepared model (1: this process).
    instances: int = 1
    # Cores per instance (None: the usable cores divided evenly among the instances).
    cores_per_instance: Optional[int] = None


@dataclass
class Config:
    model: ModelConfig = MISSING
    task: TaskConfig = MISSING
    data: DataConfig = MISSING
    mode: ModeConfig = MISSING
    precision: PrecisionConfig = MISSING
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    experiment_name: str = "default"
    # Free-form note recorded in results.json (e.g. why this run exists).
    note: Optional[str] = None


def config_groups() -> str:
    """`group: option, ...` per line, from the yaml files of every config dir (the option names a
    user types; the `<name>_schema` entries in Hydra's ConfigStore are not options). For --help."""
    groups: dict[str, set[str]] = {}
    for root in plugins.search_dirs():
        for path in root.glob("*/*.yaml"):
            if path.parent.name not in ("hydra", "local"):
                groups.setdefault(path.parent.name, set()).add(path.stem)
    return "".join(f"{group}: {', '.join(sorted(options))}\n" for group, options in sorted(groups.items()))


def register_configs() -> None:
    """Store the root schema and every plug-in's schema in Hydra's ConfigStore (idempotent)."""
    if not OmegaConf.has_resolver("cpueval.asset"):
        OmegaConf.register_new_resolver("cpueval.asset", lambda name: str(ASSETS_DIR / name))
        OmegaConf.register_new_resolver("cpueval.config_groups", config_groups)
    ConfigStore.instance().store(name="cpueval_schema", node=Config)
    plugins.register_configs()
