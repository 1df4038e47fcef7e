"""Launched sweeps, as a user runs them (`cpueval -m`): failure isolation and exit code, resume (a
second launch runs 0 jobs), force, resume after a kill, and parallel joblib jobs writing into one sweep
dir. Launches run in-process through cpueval's entry (tests/support/inprocess.py), but the one that is
killed: there the launcher process itself dies, as under the OOM killer. Faults come from
tests/support/cpueval_faults.py (a Hydra callback), so nothing depends on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cpueval.identity import job_hash
from cpueval_faults import env_with_support, launch_args
from inprocess import Outcome, run_cpueval

pytestmark = pytest.mark.slow

FAST = ("data.max_eval_samples=6", "runtime.warmup_batches=0", "runtime.progress=false")


def launch(sweep_dir: Path, *overrides: str, fault: str = "", cache: Path | None = None) -> Outcome:
    faults = launch_args(fault) if fault else []
    env = {"CPUEVAL_CACHE": str(cache)} if cache is not None else {}
    # joblib's workers are new processes: they find the fault callback through PYTHONPATH
    env["PYTHONPATH"] = env_with_support(os.environ)["PYTHONPATH"]
    return run_cpueval(["-m", f"hydra.sweep.dir={sweep_dir}", *FAST, *overrides, *faults], env=env)


def launch_in_a_new_process(sweep_dir: Path, *overrides: str, fault: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cpueval", "-m", f"hydra.sweep.dir={sweep_dir}", *FAST, *overrides,
                             *launch_args(fault)], capture_output=True, text=True, env=env_with_support(os.environ),
                            timeout=900)
    print(result.stdout[-3000:], result.stderr[-6000:])  # shown when a test fails
    return result


def records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")}


def mtimes(sweep_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/results.json")}


def by_batch(recs: dict[str, dict]) -> dict[tuple[str, int], dict]:
    return {(r["config"]["precision"]["name"], r["config"]["runtime"]["batch_size"]): r for r in recs.values()}


def test_failures_are_isolated_then_resume_reruns_failures_keeps_refusals_and_force_reruns_all(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    grid = ("precision=fp32,bf16", "runtime.batch_size=4,8")
    first = launch(sweep_dir, *grid, fault="precision=bf16,runtime.batch_size=8:oom;precision=fp32,runtime.batch_size=8:refuse")
    assert first.returncode == 1
    recs = by_batch(records(sweep_dir))
    assert len(recs) == 4
    assert recs[("fp32", 4)]["status"] == recs[("bf16", 4)]["status"] == "ok"
    assert recs[("bf16", 8)]["status"] == "failed" and recs[("bf16", 8)]["error"]["type"] == "MemoryError"
    assert recs[("fp32", 8)]["status"] == "refused" and "injected fault" in recs[("fp32", 8)]["error"]["message"]
    assert "this launch ran 4," in first.log
    # the next command in the same process exits by its own outcome, not the failed launch's
    assert run_cpueval([f"hydra.run.dir={tmp_path / 'single'}", *FAST]).code == 0
    # the job dir's name ends in the hash of the config its record holds
    for name, record in records(sweep_dir).items():
        assert name.endswith("__" + job_hash(record["config"])) and "precision=" in name
    report = (sweep_dir / "report" / "report.md").read_text()
    assert "## Not ok" in report and "MemoryError" in report and (sweep_dir / "report" / "throughput.png").exists()
    verdicts = json.loads((sweep_dir / "report" / "verdict.json").read_text())  # logged at the end of the sweep
    assert verdicts and all(f"verdict: {v['line']}" in first.log for v in verdicts)
    assert {v["winner"]["job"] for v in verdicts if v["winner"]} <= {n for n, r in records(sweep_dir).items()
                                                                      if r["status"] == "ok"}

    before = mtimes(sweep_dir)
    second = launch(sweep_dir, *grid)  # same command, faults gone: only the failed job runs again;
    assert second.returncode == 3       # the refusal stands (same host and packages): refused only
    after = mtimes(sweep_dir)
    changed = {name for name in after if after[name] != before[name]}
    assert {(r["config"]["precision"]["name"], r["config"]["runtime"]["batch_size"])
            for n, r in records(sweep_dir).items() if n in changed} == {("bf16", 8)}
    assert second.log.count("skipped (done)") == 2 and second.log.count("skipped (refused before") == 1
    assert "this launch ran 1," in second.log
    assert by_batch(records(sweep_dir))[("bf16", 8)]["status"] == "ok"

    third = launch(sweep_dir, *grid)  # nothing left to do: 0 jobs run
    assert third.returncode == 3
    assert mtimes(sweep_dir) == after
    assert third.log.count("skipped (done)") == 3 and "this launch ran 0," in third.log

    forced = launch(sweep_dir, *grid, "runtime.force=true")  # same dirs, all re-run, now all ok
    assert forced.returncode == 0
    final = mtimes(sweep_dir)
    assert set(final) == set(after) and all(final[n] != after[n] for n in final)
    assert "skipped (" not in forced.log
    assert all(r["status"] == "ok" for r in records(sweep_dir).values())


def test_a_killed_launch_resumes_with_the_unfinished_jobs(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    grid = ("runtime.batch_size=2,4,8",)
    killed = launch_in_a_new_process(sweep_dir, *grid, fault="runtime.batch_size=4:kill")
    assert killed.returncode != 0  # the whole launcher process died, as under the OOM killer
    recs = {r["config"]["runtime"]["batch_size"]: r for r in records(sweep_dir).values()}
    assert recs[2]["status"] == "ok" and recs[4]["status"] == "running" and 8 not in recs
    done_mtime = mtimes(sweep_dir)
    resumed = launch(sweep_dir, *grid)
    assert resumed.returncode == 0
    recs = {r["config"]["runtime"]["batch_size"]: r for r in records(sweep_dir).values()}
    assert all(r["status"] == "ok" for r in recs.values()) and set(recs) == {2, 4, 8}
    ok_dir = next(n for n, m in done_mtime.items() if records(sweep_dir)[n]["config"]["runtime"]["batch_size"] == 2)
    assert mtimes(sweep_dir)[ok_dir] == done_mtime[ok_dir]
    assert "this launch ran 2," in resumed.log


def test_parallel_joblib_jobs_share_one_sweep_dir_and_cache(tmp_path: Path) -> None:
    sweep_dir, cache = tmp_path / "sweep", tmp_path / "cache"
    result = launch(sweep_dir, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "runtime.intra_op_threads=1",
                    "runtime.batch_size=2,4,8,16", cache=cache)
    assert result.returncode == 0
    recs = records(sweep_dir)
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs.values())
    assert len({r["run_dir"] for r in recs.values()}) == 4
    # one feature-cache entry for the four jobs (same data and tokenizer), no half-written leftovers
    entries = list((cache / "features").iterdir())
    assert [e.name for e in entries if e.name.startswith(".")] == []
    assert len(entries) == 1 and (entries[0] / "dataset_info.json").exists()
    assert {r["data"]["feature_cache"] for r in recs.values()} <= {"hit", "miss"}
    assert not list(sweep_dir.rglob(".*.tmp"))
    table = (sweep_dir / "report" / "table.csv").read_text()
    assert table.count("\n") == 5 and "feature_cache" in table
