"""Sweeps through the Slurm launcher (hydra/launcher=slurm) on the single-node cluster of
jobs/slurm/local-cluster.sh (start it with --accounting: submitit needs sacct). As a user runs them:
a 4-job array with one failing job and its report, a re-launch that runs only the failed job, a job
requeued mid-run (`scontrol requeue`) that ends ok exactly once, and the errors a user can make (no
Slurm here, unknown partition, too much memory) as one line each.

Skipped with the reason when `sinfo` does not answer -- unless CPUEVAL_SLURM_TESTS=1 (CI, .ci/run),
where a missing cluster fails them instead of silently skipping."""

from __future__ import annotations

import json
import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpueval_faults import env_with_support, launch_args

FAST = ("data.max_eval_samples=4", "runtime.warmup_batches=0", "runtime.progress=false")
# The node is the 2-CPU machine itself (local-cluster.sh: CPUs from `slurmd -C`, RealMemory = RAM
# minus headroom): 1 core and 2 GB per job lets two jobs run at once.
SLURM = ("hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
         "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=10")
GRID = "runtime.batch_size=2,4,8,16"
LAUNCH_TIMEOUT_S = 300


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "no Slurm here (sinfo not on PATH): start one with `bash jobs/slurm/local-cluster.sh start --accounting`"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P %T"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s (slurmctld down?): bash jobs/slurm/local-cluster.sh start --accounting"
    if out.returncode != 0 or not out.stdout.strip():
        return f"sinfo failed ({out.stderr.strip() or 'no partitions'}): bash jobs/slurm/local-cluster.sh start --accounting"
    try:
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        acct = None
    if acct is None or acct.returncode != 0:
        return ("Slurm runs without accounting (sacct fails): submitit cannot see killed jobs; "
                "restart with `bash jobs/slurm/local-cluster.sh start --accounting`")
    return None


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    problem = _cluster_problem()
    if problem is None:
        return
    if os.environ.get("CPUEVAL_SLURM_TESTS") == "1":
        pytest.fail(f"CPUEVAL_SLURM_TESTS=1 but the Slurm cluster is not usable: {problem}", pytrace=False)
    pytest.skip(problem)


def launch(sweep_dir: Path, *overrides: str, fault: str = "", env_path: str | None = None,
           background: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
    env = env_with_support({k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"})
    if env_path is not None:
        env["PATH"] = env_path
    faults = launch_args(fault) if fault else []
    cmd = [sys.executable, "-m", "cpueval", "-m", f"hydra.sweep.dir={sweep_dir}", *FAST, *overrides, *faults]
    if background:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=LAUNCH_TIMEOUT_S)
    print(result.stdout[-3000:], result.stderr[-6000:])  # shown when a test fails
    result.log = result.stdout + result.stderr  # type: ignore[attr-defined]
    return result


def records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")}


def mtimes(sweep_dir: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sweep_dir.glob("*/results.json")}


def array_ids(sweep_dir: Path) -> set[str]:
    """Slurm array job ids submitted for this sweep (submitit folder `.submitit/%j`)."""
    return {p.name for p in (sweep_dir / ".submitit").glob("*") if p.is_dir() and "_" not in p.name}


def sacct(job_id: str) -> str:
    return subprocess.run(["sacct", "-j", job_id, "-D", "--format=JobID,JobName,State,ExitCode,Elapsed,AllocCPUS,NodeList"],
                          capture_output=True, text=True, timeout=30).stdout


def no_temp_files(job_dir: Path) -> bool:
    return not [p for p in job_dir.iterdir() if p.name.endswith(".tmp")]


FAILING_POINT = "runtime.batch_size=4:error"  # one job of the array fails (test-only fault, cpueval_faults)


@pytest.fixture(scope="module")
def four_jobs(slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    sweep_dir = tmp_path_factory.mktemp("slurm") / "sweep"
    return sweep_dir, launch(sweep_dir, GRID, *SLURM, fault=FAILING_POINT)


@pytest.mark.slurm
@pytest.mark.slow  # real Slurm jobs: minutes
def test_four_job_array_reports_its_failed_job_and_slurm_facts(four_jobs: tuple[Path, subprocess.CompletedProcess]) -> None:
    sweep_dir, result = four_jobs
    assert result.returncode == 1  # a failed job fails the sweep; the others still finish
    recs = {r["config"]["runtime"]["batch_size"]: r for r in records(sweep_dir).values()}
    assert sorted(recs) == [2, 4, 8, 16]
    assert {recs[b]["status"] for b in (2, 8, 16)} == {"ok"}
    assert recs[4]["status"] == "failed" and "injected fault" in recs[4]["error"]["message"]
    assert "Traceback" not in result.stderr
    (array_id,) = array_ids(sweep_dir)  # one sbatch: one job array for the 4 points
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    tasks = set()
    for record in recs.values():
        slurm = record["environment"]["slurm"]
        assert slurm["array_job_id"] == array_id and slurm["node"] == node and slurm["partition"] == "debug"
        assert slurm["cpus_per_task"] == 1 and slurm["restart_count"] == 0 and slurm["job_id"]
        tasks.add(slurm["array_task_id"])
    for batch_size in (2, 8, 16):  # threads follow the cores Slurm granted (the failed job stopped before)
        assert recs[batch_size]["threads"]["intra_op_threads"] == 1
        assert recs[batch_size]["threads"]["intra_op_source"] == "SLURM_CPUS_PER_TASK"
    assert tasks == {0, 1, 2, 3}
    report = sweep_dir / "report"
    assert (report / "report.md").is_file() and (report / "throughput.png").is_file()
    assert "## Not ok" in (report / "report.md").read_text()
    assert "this launch ran 4," in result.log
    print(sacct(array_id))


@pytest.mark.slurm
@pytest.mark.slow  # real Slurm jobs: minutes
def test_relaunch_runs_only_the_failed_job(four_jobs: tuple[Path, subprocess.CompletedProcess]) -> None:
    sweep_dir, first = four_jobs
    assert first.returncode == 1
    before_ids, before_mtimes = array_ids(sweep_dir), mtimes(sweep_dir)
    failed_dir = next(name for name, r in records(sweep_dir).items() if r["status"] == "failed")
    again = launch(sweep_dir, GRID, *SLURM)  # the fault removed: the same jobs (same config, hash, directory)
    assert again.returncode == 0
    (new_id,) = array_ids(sweep_dir) - before_ids  # one new sbatch: a single job (not an array) for the failed point
    after = mtimes(sweep_dir)
    assert {name: t for name, t in after.items() if name != failed_dir} == \
           {name: t for name, t in before_mtimes.items() if name != failed_dir}  # ok records not rewritten
    assert after[failed_dir] != before_mtimes[failed_dir]
    rerun = records(sweep_dir)[failed_dir]
    rerun_slurm = rerun["environment"]["slurm"]
    assert rerun["status"] == "ok" and rerun_slurm["job_id"] == new_id and rerun_slurm["array_job_id"] is None
    assert "3 of 4 jobs already done" in again.log and again.log.count("skipped (done)") == 3
    assert "this launch ran 1, 3 had run before" in again.log


@pytest.mark.slurm
@pytest.mark.slow  # real Slurm jobs: minutes
def test_job_requeued_mid_run_is_recorded_interrupted_then_completes_once(slurm_cluster: None, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    # The job sleeps 15 s after writing its "running" record (first attempt only): time to requeue it mid-run.
    proc = launch(sweep_dir, "runtime.batch_size=4", *SLURM, fault="runtime.batch_size=4:delay=15", background=True)
    try:
        slow = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and slow is None:
            for name, record in records_quiet(sweep_dir).items():
                if record.get("status") == "running" and (record["environment"] or {}).get("slurm"):
                    slow = (sweep_dir / name, record)
            time.sleep(0.5)
        assert slow is not None, "the slow job never started"
        job_dir, running = slow
        slurm = running["environment"]["slurm"]
        job = slurm["job_id"]  # a one-point sweep is a single job, not an array
        assert slurm["array_job_id"] is None
        time.sleep(2)
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
        # the job records how it ended before it goes: interrupted, a complete file
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and read(job_dir).get("status") == "running":
            time.sleep(0.2)
        interrupted = read(job_dir)
        assert interrupted["status"] == "interrupted" and interrupted["error"]["message"].startswith("SIGTERM")
        assert interrupted["environment"]["slurm"]["restart_count"] == 0
        out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(out[-3000:], err[-6000:])
    assert proc.returncode == 0, err[-3000:]
    final = read(job_dir)
    assert final["status"] == "ok" and final["environment"]["slurm"]["restart_count"] == 1
    assert final["environment"]["slurm"]["job_id"] == slurm["job_id"]  # same Slurm job, run again
    (attempt,) = final["earlier_attempts"]
    assert attempt["status"] == "interrupted" and attempt["slurm"]["restart_count"] == 0
    assert attempt["finished_at"] <= final["started_at"]
    assert no_temp_files(job_dir) and (job_dir / "predictions.json").is_file() and (job_dir / "eval_results.json").is_file()
    print(json.dumps({"status": final["status"], "slurm": final["environment"]["slurm"], "started_at": final["started_at"],
                      "finished_at": final["finished_at"], "earlier_attempts": final["earlier_attempts"]}, indent=1))
    print(sacct(job))
    # nothing runs after the sweep: Slurm holds the job as completed, not queued again
    assert subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip() == ""
    states = subprocess.run(["sacct", "-n", "-X", "-j", job, "-o", "State%30"], capture_output=True, text=True,
                            timeout=30).stdout.split()
    assert states == ["COMPLETED"], states


def records_quiet(sweep_dir: Path) -> dict[str, dict]:
    out = {}
    for path in sweep_dir.glob("*/results.json"):
        try:
            out[path.parent.name] = json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    return out


def read(job_dir: Path) -> dict:
    return json.loads((job_dir / "results.json").read_text())


# -- errors a user can make: one line, non-zero exit, no traceback ----------------------------------------
def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2
    assert "Traceback" not in result.log
    lines = [line for line in result.stderr.splitlines() if line.startswith("cpueval: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_slurm_launcher_without_slurm_is_one_line(tmp_path: Path) -> None:
    # PATH without srun/sbatch (works whether or not a cluster runs here)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    hidden = {"srun", "sbatch", "squeue", "sinfo", "scontrol", "sacct", "scancel"}
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.listdir(directory):
            target = bindir / entry
            if entry not in hidden and not os.path.lexists(target):
                with contextlib.suppress(FileExistsError):  # merged-/usr hosts list some dirs twice
                    target.symlink_to(os.path.join(directory, entry))
    result = launch(tmp_path / "sweep", *SLURM, env_path=str(bindir))
    line = _one_error_line(result)
    assert "hydra/launcher=slurm needs Slurm" in line and "hydra/launcher=local" in line
    assert not (tmp_path / "sweep" / ".submitit").exists() or not array_ids(tmp_path / "sweep")


@pytest.mark.slurm
@pytest.mark.slow  # real Slurm jobs: minutes
def test_unknown_partition_is_one_line(slurm_cluster: None, tmp_path: Path) -> None:
    result = launch(tmp_path / "sweep", *SLURM, "hydra.launcher.partition=nope")
    line = _one_error_line(result)
    assert line == ("cpueval: error: Slurm rejected the job array: invalid partition specified: nope "
                    "(hydra.launcher.partition=nope)")


@pytest.mark.slurm
@pytest.mark.slow  # real Slurm jobs: minutes
def test_memory_the_node_cannot_give_is_one_line(slurm_cluster: None, tmp_path: Path) -> None:
    result = launch(tmp_path / "sweep", *SLURM, "hydra.launcher.mem_gb=100000")
    line = _one_error_line(result)
    assert line == ("cpueval: error: Slurm rejected the job array: Memory specification can not be satisfied "
                    "(hydra.launcher.mem_gb=100000)")


# -- the nightly wrapper (jobs/slurm/nightly.sbatch) as a scheduled night runs it -----------------
NIGHTLY = Path(__file__).resolve().parents[1] / "jobs" / "slurm" / "nightly.sbatch"
TINY_NIGHT = ("model=tiny_random", "data=squad_sample", *FAST)


def submit_nightly(night_dir: Path, *overrides: str, wait: bool) -> tuple[str, subprocess.CompletedProcess]:
    """sbatch the wrapper as the README says (no cores per job given), into night_dir. Returns (job id, sbatch)."""
    night_dir.parent.mkdir(parents=True, exist_ok=True)  # Slurm does not create the --output directory
    env = env_with_support({**os.environ, "CPUEVAL_NIGHTLY_DIR": str(night_dir), "CPUEVAL_ROOT": str(NIGHTLY.parents[2]),
                            "CPUEVAL": str(Path(sys.executable).parent / "cpueval")})
    cmd = ["sbatch", "--parsable", f"--output={night_dir.parent}/wrapper-%j.out", *(["--wait"] if wait else []),
           str(NIGHTLY), "hydra.launcher.partition=debug", "hydra.launcher.mem_gb=2", *TINY_NIGHT, *overrides]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=LAUNCH_TIMEOUT_S, cwd=NIGHTLY.parents[2])
    job_id = result.stdout.strip().splitlines()[0].split(";")[0] if result.stdout.strip() else ""
    return job_id, result


def squeue_names(name: str) -> str:
    return subprocess.run(["squeue", "-h", "-n", name, "-o", "%i %j %T"], capture_output=True, text=True, timeout=30).stdout


@pytest.mark.slurm
@pytest.mark.slow  # real Slurm jobs: minutes
def test_nightly_fits_beside_its_wrapper_and_expected_refusals_keep_the_night_green(slurm_cluster: None,
                                                                                   tmp_path: Path) -> None:
    night = tmp_path / "nightly" / "2026-12-01"
    # The default 2 cores per job on this 2-core node would wait forever behind the 1-core wrapper;
    # ipex is refused outside the IPEX environment (expected on this machine), eager runs.
    job_id, result = submit_nightly(night, "mode=eager,ipex", wait=True)
    wrapper_log = (night.parent / f"wrapper-{job_id}.out").read_text()
    print(wrapper_log[-4000:])
    assert result.returncode == 0, result.stderr
    assert "cores per sweep job lowered from 2 to 1" in wrapper_log
    assert "sweep finished with exit code 3" in wrapper_log and "not a failure" in wrapper_log
    statuses = {r["config"]["mode"]["name"]: r["status"] for r in records(night).values()}
    assert statuses == {"eager": "ok", "ipex": "refused"}
    (ok,) = [r for r in records(night).values() if r["status"] == "ok"]
    assert ok["threads"]["intra_op_threads"] == 1 and ok["environment"]["slurm"]["cpus_per_task"] == 1
    assert "refused" in (night / "report" / "report.md").read_text()
    (array,) = array_ids(night)
    names = subprocess.run(["sacct", "-j", array, "-n", "-X", "-o", "JobName%60"], capture_output=True, text=True,
                           timeout=30).stdout.split()
    assert names and set(names) == {f"cpueval-nightly-{job_id}"}  # the array carries the wrapper's name


@pytest.mark.slurm
@pytest.mark.slow  # real Slurm jobs: minutes
def test_cancelling_the_nightly_wrapper_cancels_its_array(slurm_cluster: None, tmp_path: Path) -> None:
    night = tmp_path / "nightly" / "2026-12-02"
    job_id, result = submit_nightly(night, "runtime.batch_size=2,4,8", *launch_args("runtime.batch_size=2:delay=120"),
                                    wait=False)
    assert result.returncode == 0, result.stderr
    array_name = f"cpueval-nightly-{job_id}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(r.get("status") == "running" for r in records_quiet(night).values()):
        time.sleep(1)
    assert "RUNNING" in squeue_names(array_name), "the array never started"
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (squeue_names(array_name) or squeue_names("cpueval-nightly")):
        time.sleep(1)
    assert squeue_names(array_name) == "", "the array outlived its cancelled wrapper"
    wrapper_log = (night.parent / f"wrapper-{job_id}.out").read_text()
    print(wrapper_log[-4000:])
    assert f"cancelling the sweep's array ({array_name})" in wrapper_log
    assert (night / "report" / "report.md").is_file()  # what there was, reported
