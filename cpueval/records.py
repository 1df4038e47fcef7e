"""results.json as typed data: one record per run, its JSON Schema, and atomic writes.

`RunRecord` (dataclasses below) is the whole of results.json. The pipeline fills one and `save`s it;
everything that reads results (summary, report, resume, tracking, the nightly comparison) goes through
`load`/`read_record`, which validate with pydantic and migrate older schema versions. The committed
JSON Schema (`cpueval/schema/results.schema.json`) is generated from these dataclasses
(`python -m cpueval.records > cpueval/schema/results.schema.json`); a test keeps the two equal and
validates every results.json the test suite writes against the file.

Every write is atomic (temp file in the same directory + fsync + rename), so a killed job leaves
either the previous complete file or the new complete file, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

import numpy as np

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 2
SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / "results.schema.json"
Status = Literal["running", "ok", "failed", "refused", "interrupted"]


@dataclass
class ErrorInfo:
    type: str
    message: str


@dataclass
class Requested:
    mode: str
    precision: str


@dataclass
class Threads:
    intra_op_threads: int
    inter_op_threads: int
    intra_op_source: str  # runtime.intra_op_threads | SLURM_CPUS_PER_TASK | affinity
    usable_cores: int


@dataclass
class Actual:
    """What ran, which may differ from what was asked (a fallback mode)."""

    mode: str
    precision: str
    attn_implementation: Optional[str] = None
    # the task.max_seq_length that ran: the requested one, or the model's limit when that is lower (capped)
    max_seq_length: Optional[int] = None
    details: dict[str, Any] = field(default_factory=dict)  # the mode's (trace shape, compile options, export)
    precision_details: dict[str, Any] = field(default_factory=dict)  # what the precision did (layers quantized)


@dataclass
class SlurmContext:
    job_id: Optional[str] = None
    array_job_id: Optional[str] = None
    array_task_id: Optional[int] = None
    node: Optional[str] = None
    cpus_per_task: Optional[int] = None
    restart_count: int = 0
    partition: Optional[str] = None


@dataclass
class Environment:
    cpu_model: str
    isa_flags: list[str]
    torch_cpu_capability: str
    machine: str
    host: str
    logical_cpus: Optional[int]
    usable_cores: int
    python: str
    versions: dict[str, Optional[str]]  # cpueval's dependencies and the job's plug-ins' packages
    git_commit: Optional[str] = None
    slurm: Optional[SlurmContext] = None
    # Whether each precision runs natively on this CPU, from the precisions' declarations.
    native_precisions: dict[str, bool] = field(default_factory=dict)


@dataclass
class ModelInfo:
    name_or_path: str
    resolved_path: Optional[str]
    revision: Optional[str]
    builtin_random_weights: bool
    model_class: str
    num_parameters: int
    attn_implementation: Optional[str]
    config_sha256: Optional[str]
    weights_sha256: Optional[str]
    tokenizer_sha256: str


@dataclass
class CalibrationInfo:
    """The examples that calibrated static quantization (cpueval/calibration.py)."""

    source: str  # unscored | held_out | path
    examples: int
    left_out_of_scoring: bool  # held_out: these were taken out of the scored set
    method: str
    ids: list[str]
    fingerprint: str
    overlaps_scored: bool = False  # source=scored: these are scored too


@dataclass
class SearchStep:
    """One evaluation of the int8 search: the `kept` most sensitive layers in fp32."""

    kept: int
    metric: float
    ratio: float  # metric / fp32 metric on the validation slice
    passed: bool
    forward_seconds: float  # the validation slice's forward loop (eager for the PyTorch backends)
    speedup: float  # fp32's forward seconds / this step's, same execution and slice
    seconds: float  # quantizing + evaluating


@dataclass
class Int8SearchInfo:
    """precision.accuracy_target's search (cpueval/int8_search.py)."""

    accuracy_target: float
    metric: str
    reference_metric: float  # fp32 on the validation slice
    reference_forward_seconds: float
    validation: CalibrationInfo  # the examples each step is scored on
    fp32_layers: list[str]  # kept in fp32 (precision.skip_modules for this run, with the user's own)
    met_target: bool
    stopped: str
    evaluations: int
    seconds: float  # the search's cost when it ran (a cache hit costs none of it)
    cache: str  # hit | miss | disabled
    cache_key: str
    overrides: str  # pass these back to rebuild the chosen model without searching
    ranking: list[tuple[str, float]] = field(default_factory=list)  # (layer, output error alone), worst first
    steps: list[SearchStep] = field(default_factory=list)


@dataclass
class DataInfo:
    source: str
    split: Optional[str]
    num_examples: int
    fingerprint: str
    num_features: Optional[int] = None
    feature_cache: Optional[str] = None  # hit | miss | disabled
    num_batches: Optional[int] = None
    real_tokens: Optional[int] = None
    padding_share: Optional[float] = None
    calibration: Optional[CalibrationInfo] = None


@dataclass
class Timing:
    """Seconds per stage; a stage that did not run is None."""

    model_load: Optional[float] = None
    data_load: Optional[float] = None
    tokenize: Optional[float] = None
    batching: Optional[float] = None
    calibration: Optional[float] = None  # choosing, tokenizing and batching the calibration examples
    instance_start: Optional[float] = None  # runtime.instances > 1: worker start-up and model loading (slowest)
    int8_search: Optional[float] = None  # precision.accuracy_target: validation slice, ranking, search
    prepare: Optional[float] = None
    warmup: Optional[float] = None
    forward_loop: Optional[float] = None  # instances > 1: from the first instance's first batch to the last's last
    parity: Optional[float] = None
    postprocess: Optional[float] = None
    metrics: Optional[float] = None
    total: Optional[float] = None


@dataclass
class Throughput:
    forward_examples_per_s: Optional[float]
    forward_features_per_s: Optional[float]
    forward_tokens_per_s: Optional[float]
    e2e_examples_per_s: Optional[float]
    e2e_features_per_s: Optional[float]


@dataclass
class Latency:
    """Per-call forward latency in milliseconds: one call is a batch (throughput scenario) or one
    request of batch size 1 (runtime.scenario=latency)."""

    count: int
    mean: Optional[float] = None
    p50: Optional[float] = None
    p90: Optional[float] = None
    p99: Optional[float] = None
    min: Optional[float] = None
    max: Optional[float] = None
    p999: Optional[float] = None


@dataclass
class Instance:
    """One worker process of a multi-instance run (runtime.instances > 1)."""

    index: int
    pid: int
    cores: list[int]  # its affinity mask: disjoint from the other instances'
    threads: int
    batches: int
    features: int
    real_tokens: int
    prepare_s: float
    warmup_s: float
    forward_loop_s: float
    loop_start_s: float  # seconds after the parent started the instances (all start after a barrier)
    loop_end_s: float
    forward_features_per_s: Optional[float] = None
    latency_ms: Optional[Latency] = None
    peak_rss_mb: Optional[float] = None  # this worker process


@dataclass
class Memory:
    peak_rss_mb: Optional[float]  # this job, sampled
    process_peak_rss_mb: Optional[float]  # the whole process (earlier jobs of a basic-launcher sweep too)


@dataclass
class OutputParity:
    max_abs_diff: float
    identical_predictions: float
    predictions: int


@dataclass
class Parity:
    """This run's outputs against eager fp32 on a fixed sample of batches."""

    max_abs_diff: float
    identical_predictions: float
    predictions: int
    batches: int
    outputs: dict[str, OutputParity] = field(default_factory=dict)
    batches_compared: list[int] = field(default_factory=list)


@dataclass
class Attempt:
    """An unfinished earlier run of the same job (interrupted, failed, killed) that this one replaces."""

    status: Optional[str]
    started_at: Optional[str]
    finished_at: Optional[str]
    error: Optional[ErrorInfo] = None
    slurm: Optional[SlurmContext] = None


@dataclass
class RunRecord:
    """results.json."""

    status: Status
    started_at: str
    config_hash: str  # cpueval.identity.job_hash of `config`: also the job directory's suffix
    config: dict[str, Any]  # the resolved job config
    requested: Requested
    run_dir: str
    schema_version: int = SCHEMA_VERSION
    error: Optional[ErrorInfo] = None
    finished_at: Optional[str] = None
    environment: Optional[Environment] = None
    earlier_attempts: list[Attempt] = field(default_factory=list)
    threads: Optional[Threads] = None
    model: Optional[ModelInfo] = None
    data: Optional[DataInfo] = None
    task_stats: dict[str, Any] = field(default_factory=dict)
    actual: Optional[Actual] = None
    metrics: dict[str, Optional[float]] = field(default_factory=dict)
    headline_metrics: list[str] = field(default_factory=list)
    latency_ms: Optional[Latency] = None
    batch_latencies_ms: list[float] = field(default_factory=list)  # the timed loop, batch order
    instances: list[Instance] = field(default_factory=list)  # runtime.instances > 1: each worker's figures
    shapes: dict[str, Any] = field(default_factory=dict)  # distinct shapes + the mode's counters
    files: list[str] = field(default_factory=list)
    timing: Optional[Timing] = None
    throughput: Optional[Throughput] = None
    memory: Optional[Memory] = None
    parity: Optional[Parity] = None
    int8_search: Optional[Int8SearchInfo] = None
    warnings: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """The error as one line ("Type: message"), or "" when there is none."""
        return f"{self.error.type}: {self.error.message}" if self.error else ""


# -- reading -------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _adapter() -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(RunRecord)


def from_dict(data: dict[str, Any]) -> RunRecord:
    """A RunRecord from results.json data of any schema version (validated; raises pydantic's ValidationError)."""
    return _adapter().validate_python(migrate(data))


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Schema version 1 (before the typed record) -> 2: the model class key, threads out of `actual`."""
    if data.get("schema_version", 1) >= 2:
        return data
    data = json.loads(json.dumps(data))
    model = data.get("model")
    if isinstance(model, dict) and "class" in model:
        model["model_class"] = model.pop("class")
    env = data.get("environment")
    if isinstance(env, dict):
        env["native_precisions"] = {k[len("native_"):]: v for k, v in env.items() if k.startswith("native_")}
    data.setdefault("requested", {"mode": _config_name(data, "mode"), "precision": _config_name(data, "precision")})
    data.setdefault("config_hash", "")
    data.setdefault("started_at", data.get("finished_at") or "")
    data.setdefault("run_dir", "")
    data["schema_version"] = SCHEMA_VERSION
    return data


def _config_name(data: dict[str, Any], group: str) -> str:
    node = (data.get("config") or {}).get(group) or {}
    return str(node.get("name", "?")) if isinstance(node, dict) else "?"


def parse(cls: type, data: Any) -> Any:
    """`data` (plain JSON data) validated as dataclass `cls` of this module."""
    from pydantic import TypeAdapter

    return TypeAdapter(cls).validate_python(data)


def read_record(run_dir: Path) -> Optional[RunRecord]:
    """The run's record, or None if results.json is absent, unreadable or not a record."""
    from pydantic import ValidationError

    data = read_results(run_dir)
    if not isinstance(data, dict):
        return None
    try:
        return from_dict(data)
    except ValidationError:
        return None


def read_results(run_dir: Path) -> Optional[dict[str, Any]]:
    """The run's results.json as plain data, or None if absent or not JSON."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def json_schema() -> dict[str, Any]:
    schema = _adapter().json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "cpueval results.json"
    return schema


# -- writing -------------------------------------------------------------------------------------------
def to_dict(record: RunRecord) -> dict[str, Any]:
    return jsonable(dataclasses.asdict(record))


def save(record: RunRecord, run_dir: Optional[Path] = None) -> Path:
    """Write the record to `<run_dir>/results.json` atomically (run_dir defaults to the record's)."""
    return write_json_atomic(Path(run_dir or record.run_dir) / RESULTS_FILE, to_dict(record))


def jsonable(value: Any) -> Any:
    """Plain JSON data: numpy scalars/arrays and paths -> plain JSON; NaN/inf -> None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_text_atomic(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; results are for everyone who reads the sweep
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(jsonable(obj), indent=indent, ensure_ascii=False) + "\n")


def write_lines_atomic(path: Path, lines: Iterable[str]) -> Path:
    return write_text_atomic(path, "".join(f"{line}\n" for line in lines))


if __name__ == "__main__":  # python -m cpueval.records > cpueval/schema/results.schema.json
    json.dump(json_schema(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
