"""Hand-made results.json records for the report and verdict tests, built through the typed record
(cpueval.records) so that drift in the schema shows in the tests that use them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from cpueval import records
from cpueval.identity import job_hash

BASE_CONFIG: dict[str, Any] = {
    "model": {"name_or_path": "builtin:tiny-bert", "attn_implementation": None},
    "task": {"name": "qa", "max_seq_length": 384, "doc_stride": 128},
    "data": {"path": "/somewhere/sample_squad.json", "max_eval_samples": None, "split": "validation"},
    "mode": {"name": "eager", "fallback": None},
    "precision": {"name": "fp32"},
    "runtime": {"batch_size": 16, "intra_op_threads": None, "seed": 42, "force": False, "progress": True,
                "cache_dir": "/tmp/cache"},
    "experiment_name": "test",
}


def make_record(mode: str = "eager", precision: str = "fp32", f1: Optional[float] = 80.0, speed: float = 10.0,
                status: str = "ok", batch_size: int = 16, threads: int = 2, host: str = "a",
                finished: str = "2026-01-01T00:00:10+00:00", fingerprint: str = "fp1",
                mode_node: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A complete results.json, built through the typed record (so drift in the schema shows here)."""
    config = copy.deepcopy(BASE_CONFIG)
    config["mode"] = mode_node or {"name": mode, "fallback": None}
    config["precision"] = {"name": precision}
    config["runtime"]["batch_size"] = batch_size
    record = records.RunRecord(
        status=status, started_at="2026-01-01T00:00:00+00:00", finished_at=finished, config_hash=job_hash(config),
        config=config, requested=records.Requested(mode=mode, precision=precision), run_dir="/somewhere",
        environment=records.Environment(cpu_model="Test CPU", isa_flags=["avx2", "avx512f", "sse4_2"],
                                        torch_cpu_capability="AVX512", machine="x86_64", host=host, logical_cpus=2,
                                        usable_cores=2, python="3.11", versions={"torch": "2.13.0"}),
        threads=records.Threads(intra_op_threads=threads, inter_op_threads=1, intra_op_source="affinity",
                                usable_cores=2),
    )
    if status != "ok":
        record.error = records.ErrorInfo(type="Refused", message=f"mode={mode} precision={precision}: not here")
        return records.to_dict(record)
    record.actual = records.Actual(mode=mode, precision=precision, attn_implementation="sdpa")
    record.data = records.DataInfo(source="/somewhere/sample_squad.json", split="validation", num_examples=45,
                                   fingerprint=fingerprint, num_features=70, feature_cache="hit")
    record.metrics, record.headline_metrics = {"exact_match": 70.0, "f1": f1}, ["exact_match", "f1"]
    record.throughput = records.Throughput(forward_examples_per_s=speed, forward_features_per_s=speed * 1.5,
                                           forward_tokens_per_s=speed * 300, e2e_examples_per_s=speed / 2,
                                           e2e_features_per_s=speed * 0.75)
    record.latency_ms = records.Latency(count=4, p50=100.0, p90=150.0, p99=200.0)
    record.batch_latencies_ms = [90.0, 100.0, 110.0, 200.0]
    record.timing = records.Timing(prepare=0.5, warmup=0.1, total=5.0)
    record.memory = records.Memory(peak_rss_mb=500.0, process_peak_rss_mb=510.0)
    return records.to_dict(record)


def write(root: Path, name: str, record: dict[str, Any]) -> Path:
    records.from_dict(record)  # a test record that is not a valid record is a test bug
    job = root / name
    job.mkdir(parents=True)
    (job / "results.json").write_text(json.dumps(record))
    return job


def row(df: pd.DataFrame, job: str) -> pd.Series:
    return df[df["job"] == job].iloc[0]
