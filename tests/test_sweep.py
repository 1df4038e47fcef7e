"""Sweep mechanics without launching: job identity (hash, subdir), skip-if-done, locks, fault
selectors (tests/support/cpueval_faults.py), and atomic writes under concurrency. The launched sweeps are in test_sweep_launch.py."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import cpueval_faults
from cpueval import identity, resume, sweep_callback
from hand_records import make_record, write  # tests/support
from inprocess import compose_config
from cpueval.records import read_results, write_json_atomic


def compose_job(*overrides: str):
    return compose_config(overrides, return_hydra_config=True)


def test_subdir_is_readable_overrides_plus_the_hash_of_the_job_config() -> None:
    cfg = compose_job("mode=jit", "runtime.batch_size=4")
    subdir = OmegaConf.select(cfg, "hydra.sweep.subdir")
    readable, _, digest = subdir.rpartition("__")
    assert readable == "mode=jit,runtime.batch_size=4"
    job_cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    assert digest == identity.job_hash(cfg) == identity.job_hash(job_cfg)
    # ...and the config stored in results.json (resolved, JSON) hashes the same
    stored = json.loads(json.dumps(OmegaConf.to_container(job_cfg, resolve=True)))
    assert identity.job_hash(stored) == digest


def test_hash_ignores_settings_that_do_not_change_results_and_sees_the_rest() -> None:
    base = identity.job_hash(compose_job())
    assert identity.job_hash(compose_job("runtime.force=true", "runtime.progress=false",
                                      "runtime.cache_dir=/elsewhere")) == base
    assert identity.job_hash(compose_job("runtime.batch_size=4")) != base
    assert identity.job_hash(compose_job("task.doc_stride=64")) != base  # not in the overrides' names either


def test_subdir_is_one_safe_path_component() -> None:
    name = identity.job_subdir("model.name_or_path=../shared/models/x,data.path=/a b/c.json", {"a": 1})
    assert "/" not in name and " " not in name and not name.startswith(".")
    assert identity.job_subdir("", {"a": 1}).startswith("default__")
    long = identity.job_subdir("x=" + "y" * 500, {"a": 1})
    assert len(long) <= identity.MAX_READABLE + 2 + identity.HASH_CHARS
    assert identity.job_subdir("x=" + "y" * 500, {"a": 1}) != identity.job_subdir("x=" + "y" * 500, {"a": 2})


def test_done_record_needs_ok_and_the_same_config(tmp_path: Path) -> None:
    cfg = compose_job()
    stored = json.loads(json.dumps(OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)))
    assert resume.done_record(cfg, tmp_path) is None  # nothing there
    for status in ("running", "failed", "interrupted"):
        write_json_atomic(tmp_path / "results.json", {"status": status, "config": stored})
        assert resume.done_record(cfg, tmp_path) is None, status
    write_json_atomic(tmp_path / "results.json", {"status": "ok", "config": stored})
    assert resume.done_record(cfg, tmp_path) is not None
    assert resume.done_record(compose_job("runtime.batch_size=3"), tmp_path) is None


def test_a_refusal_is_kept_only_by_the_same_installation(tmp_path: Path) -> None:
    from cpueval.environment import describe_environment

    cfg = compose_job()
    stored = json.loads(json.dumps(OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)))
    env = describe_environment()
    write_json_atomic(tmp_path / "results.json", {"status": "refused", "config": stored, "environment": env})
    assert resume.done_record(cfg, tmp_path).status == "refused"
    other_host = {**env, "host": env["host"] + "-other"}
    write_json_atomic(tmp_path / "results.json", {"status": "refused", "config": stored, "environment": other_host})
    assert resume.done_record(cfg, tmp_path) is None
    new_torch = {**env, "versions": {**env["versions"], "torch": "0.0.1"}}
    write_json_atomic(tmp_path / "results.json", {"status": "refused", "config": stored, "environment": new_torch})
    assert resume.done_record(cfg, tmp_path) is None


def test_job_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    with resume.job_lock(tmp_path):
        with pytest.raises(resume.Busy):
            with resume.job_lock(tmp_path):
                pass
    with resume.job_lock(tmp_path):  # released on exit
        pass


def test_fault_selectors() -> None:
    faults = cpueval_faults.parse_faults("mode=jit,precision=bf16:oom; runtime.batch_size=8")
    assert faults == [({"mode": "jit", "precision": "bf16"}, "oom"), ({"runtime.batch_size": "8"}, "error")]
    assert cpueval_faults.matching_kind(faults, compose_job("mode=jit", "precision=bf16")) == "oom"
    assert cpueval_faults.matching_kind(faults, compose_job("mode=jit")) is None
    with pytest.raises(ValueError, match="unknown fault kind"):
        cpueval_faults.parse_faults("mode=jit:explode")


def test_fault_injection_patches_the_first_stage_after_the_running_record() -> None:
    from cpueval.pipeline import Run

    assert callable(getattr(Run, cpueval_faults.STAGE))  # the helper's hook point still exists
    source = Run.execute.__code__.co_names
    assert source.index("begin") < source.index(cpueval_faults.STAGE)


def test_write_failure_keeps_a_recorded_end_and_fills_a_missing_one(tmp_path: Path) -> None:
    cfg = compose_job()
    resume.write_failure(cfg, tmp_path, RuntimeError("boom"))
    record = read_results(tmp_path)
    assert record["status"] == "failed" and record["error"]["message"] == "boom"
    assert identity.job_hash(record["config"]) == identity.job_hash(cfg)
    write_json_atomic(tmp_path / "results.json", {"status": "refused", "error": {"message": "no"}})
    resume.write_failure(cfg, tmp_path, RuntimeError("later"))
    assert read_results(tmp_path)["status"] == "refused"


def test_a_job_the_previous_launch_ran_in_this_launchs_first_second_counts_as_done(tmp_path: Path) -> None:
    launch_start = dt.datetime(2026, 12, 7, 20, 45, 9, 396_000, tzinfo=dt.timezone.utc)
    for name, started in [("before", "2026-12-07T20:45:09.100+00:00"), ("same_ms", "2026-12-07T20:45:09.396+00:00"),
                          ("after", "2026-12-07T20:45:10.002+00:00")]:
        record = make_record()
        record["started_at"] = started
        write(tmp_path, name, record)
    summary = sweep_callback.summarize_launch(tmp_path, launch_start)
    assert [d.name for d in summary["done_before"]] == ["before"]
    assert [d.name for d in summary["ran"]] == ["after", "same_ms"]
    assert len(resume.now().split("T")[1].split("+")[0]) == len("20:45:09.396")  # records carry milliseconds


# -- concurrent writes ------------------------------------------------------------------------------
def _writer(path: str, worker: int, rounds: int) -> None:
    for i in range(rounds):
        write_json_atomic(Path(path), {"worker": worker, "round": i, "payload": list(range(2000))})


def test_concurrent_atomic_writes_never_leave_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"worker": -1, "round": -1, "payload": []})
    ctx = mp.get_context("fork")  # spawn cannot re-import a test module loaded by importlib mode
    procs = [ctx.Process(target=_writer, args=(str(path), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):
        data = json.loads(path.read_text())  # a torn write would fail to parse
        assert data["payload"] in ([], list(range(2000)))
        reads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert reads > 0 and json.loads(path.read_text())["round"] == 39
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_single_run_dir_carries_the_job_hash() -> None:
    """Two runs started in the same second get different dirs unless they are the same job."""
    cfg = compose_job("runtime.batch_size=4")
    run_dir = OmegaConf.select(cfg, "hydra.run.dir")
    assert run_dir.startswith("outputs/runs/") and run_dir.endswith("_default_" + identity.job_hash(cfg))
