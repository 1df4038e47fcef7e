"""Deployment scenarios on the builtin tiny model, in-process through Hydra's compose API: the latency
scenario (one request at a time, dataset order), several instances (runtime.instances: disjoint pinned
cores, predictions merged back equal to a single-process run, a dying instance fails the job), and the
planning helpers (core sets, length-balanced shards)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cpueval import instances, plugins, records
from cpueval.batching import Batch
from inprocess import compose_config
from cpueval.errors import Refused, UserError
from cpueval.pipeline import Run, execute

FAST = ["runtime.progress=false", "runtime.warmup_batches=1", "runtime.batch_size=8", "runtime.cache_dir=null"]
# Each instance is a fresh (spawned) interpreter importing torch and transformers: tens of seconds on a busy machine.
TWO_CORES = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable cores")


def config(*overrides: str):
    return compose_config([*FAST, *overrides])


def predictions(run_dir: Path) -> dict:
    return json.loads((run_dir / "predictions.json").read_text())


# -- planning --------------------------------------------------------------------------------------------
def test_core_sets_are_disjoint_and_default_to_an_even_split() -> None:
    assert instances.plan_cores(2, None, [5, 4, 7, 6]) == [[4, 5], [6, 7]]
    assert instances.plan_cores(3, 1, [0, 1, 2, 3]) == [[0], [1], [2]]
    with pytest.raises(Refused, match=r"runtime.instances=3 x runtime.cores_per_instance=1 needs 3 cores but this "
                                        r"job may use 2 \(0,1\)"):
        instances.plan_cores(3, None, [0, 1])
    with pytest.raises(Refused, match="needs 4 cores"):
        instances.plan_cores(2, 2, [0, 1])


def test_shards_cover_every_batch_once_balanced_by_computed_tokens() -> None:
    def batch(rows: int, width: int) -> Batch:
        return Batch(indices=np.arange(rows), lengths=np.full(rows, width),
                     inputs={"input_ids": torch.zeros(rows, width, dtype=torch.int64)})

    batches = [batch(8, 384), batch(8, 256), batch(8, 128), batch(8, 128), batch(2, 64)]  # 3072, 2048, 1024, 1024, 128
    shards = instances.shard(batches, 2)
    # largest first to the lighter side (a tie goes to the first): 3072 + 1024 against 2048 + 1024 + 128, and no
    # split of these five does better than 4096 on its heavier side
    assert shards == [[0, 3], [1, 2, 4]]
    assert sorted(n for s in shards for n in s) == list(range(len(batches)))


# -- the latency scenario --------------------------------------------------------------------------------
def test_latency_scenario_runs_one_request_at_a_time_in_dataset_order(tmp_path: Path) -> None:
    run = Run(config("runtime.scenario=latency", "data.max_eval_samples=12"), tmp_path / "latency")
    record = run.execute()
    assert [b.indices.tolist() for b in run.batches] == [[i] for i in range(record.data.num_features)]
    latency = record.latency_ms
    assert latency.count == record.data.num_batches == record.data.num_features == len(record.batch_latencies_ms)
    assert latency.min <= latency.p50 <= latency.p90 <= latency.p99 <= latency.p999 <= latency.max
    assert record.throughput.forward_examples_per_s > 0 and record.config["runtime"]["scenario"] == "latency"
    assert len(predictions(tmp_path / "latency")) == record.data.num_examples == 12


# -- instances ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@TWO_CORES
def test_two_instances_pin_disjoint_cores_and_merge_predictions_exactly(tmp_path: Path) -> None:
    single = execute(config("runtime.intra_op_threads=1"), tmp_path / "single")
    record = execute(config("runtime.instances=2"), tmp_path / "two")
    assert record.status == "ok" and len(record.instances) == 2
    cores = [set(i.cores) for i in record.instances]
    assert cores[0].isdisjoint(cores[1]) and all(len(c) == 1 for c in cores)
    assert set.union(*cores) <= os.sched_getaffinity(0) and len({i.pid for i in record.instances}) == 2
    assert all(i.threads == 1 for i in record.instances) and record.threads.intra_op_threads == 1
    assert sum(i.batches for i in record.instances) == record.data.num_batches == single.data.num_batches
    assert sum(i.features for i in record.instances) == record.data.num_features
    assert predictions(tmp_path / "two") == predictions(tmp_path / "single")
    assert record.metrics == single.metrics
    first = min(i.loop_start_s for i in record.instances)
    assert record.timing.forward_loop == pytest.approx(max(i.loop_end_s for i in record.instances) - first)
    assert record.throughput.forward_examples_per_s == pytest.approx(record.data.num_examples / record.timing.forward_loop)
    assert records.read_record(tmp_path / "two").instances[1].cores == record.instances[1].cores


@pytest.mark.slow
@TWO_CORES
def test_a_dying_instance_fails_the_job_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(instances.InstanceFailed, match="instance 1 .*died: killed by signal SIGKILL"):
        execute(config("runtime.instances=2", "mode._target_=cpueval_faults.DyingMode"), tmp_path / "dies")
    record = records.read_record(tmp_path / "dies")
    assert record.status == "failed" and record.throughput is None
    assert record.error.type == "InstanceFailed" and "SIGKILL" in record.error.message


def test_parity_with_instances_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="runtime.parity_batches=1 needs runtime.instances=1"):
        execute(config("runtime.instances=2", "runtime.parity_batches=1"), tmp_path / "parity")


def test_the_deployment_experiment_sweeps_layouts_and_existing_plugins() -> None:
    cfg = compose_config(["experiment=deployment"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert cfg.hydra.mode.name == "MULTIRUN" and params["runtime.instances"] == "1,2,4"
    assert set(params.mode.split(",")) <= set(plugins.names("mode"))
    assert set(params.precision.split(",")) <= set(plugins.names("precision"))
