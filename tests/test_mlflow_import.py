"""`cpueval mlflow` and the mlflow sweep callback, against a temporary SQLite store: one MLflow run
per job however often a sweep is imported, params/metrics/tags read back through MlflowClient equal
to results.json, failed and refused jobs with their reason, and a resumed sweep re-imported updating
only the jobs that changed. Fast tests use hand-made records; the slow ones a real 4-job sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlflow", reason="needs the mlflow extra: pip install -e '.[mlflow]'")
from mlflow.tracking import MlflowClient  # noqa: E402

from cpueval import mlflow_import  # noqa: E402
from cpueval import records as typed  # noqa: E402
from cpueval.identity import job_config, job_hash  # noqa: E402
from inprocess import Outcome, run_cpueval  # noqa: E402

FAST = ("data.max_eval_samples=6", "runtime.warmup_batches=0", "runtime.progress=false")
GRID = ("precision=fp32,bf16", "runtime.batch_size=4,8")
FAULTS = "precision=bf16,runtime.batch_size=8:oom;precision=fp32,runtime.batch_size=8:refuse"
CALLBACKS = "hydra/callbacks=[sweep_report,mlflow]"


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def store(tmp: Path) -> str:
    return f"sqlite:///{tmp / 'store' / 'mlflow.db'}"


def job_runs(uri: str, experiment: str = mlflow_import.DEFAULT_EXPERIMENT) -> dict[str, Any]:
    """Job runs by job hash (the sweep's parent run left out), read back through MlflowClient."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`cpueval.kind` = 'job'", max_results=1000)
    by_hash = {run.data.tags["cpueval.job_hash"]: run for run in runs}
    assert len(by_hash) == len(runs), "two MLflow runs for one job"
    return by_hash


def sweep_runs(uri: str) -> list[Any]:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(mlflow_import.DEFAULT_EXPERIMENT)
    return list(client.search_runs([exp.experiment_id], filter_string="tags.`cpueval.kind` = 'sweep'"))


def leaves(data: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def as_param(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# -- hand-made records (fast) ------------------------------------------------------------------------
def write_record(job_dir: Path, status: str = "ok", batch_size: int = 4, **extra: Any) -> dict[str, Any]:
    """A complete results.json, built through the typed record."""
    config = {"model": {"name_or_path": "builtin:tiny-bert"}, "task": {"name": "qa"},
              "mode": {"name": "eager"}, "precision": {"name": "fp32"},
              "runtime": {"batch_size": batch_size, "cache_dir": "/somewhere", "force": False}}
    record = typed.RunRecord(status=status, config=config, config_hash=job_hash(config), run_dir=str(job_dir),
                               requested=typed.Requested("eager", "fp32"), started_at="2026-01-01T00:00:00+00:00",
                               finished_at="2026-01-01T00:00:05+00:00")
    if "error" in extra:
        record.error = typed.ErrorInfo(**extra.pop("error"))
    assert not extra, extra
    if status == "ok":
        record.metrics, record.headline_metrics = {"f1": 42.5, "exact_match": 40.0}, ["exact_match", "f1"]
        record.throughput = typed.Throughput(12.5, None, None, None, None)
        record.latency_ms = typed.Latency(count=2, p50=8.0, p99=11.0)
        record.timing = typed.Timing(prepare=0.25)
        record.memory = typed.Memory(peak_rss_mb=512.0, process_peak_rss_mb=None)
    typed.save(record, job_dir)
    return typed.to_dict(record)


def test_params_leave_out_unhashed_settings_truncate_long_values_and_clean_keys(tmp_path: Path) -> None:
    record = write_record(tmp_path / "run")
    record["config"]["data"] = {"path": "x" * 7000, "columns": {"text:a": "q"}, "splits": [1, 2], "name": None}
    params = mlflow_import.job_params(record)
    assert "runtime.cache_dir" not in params and "runtime.force" not in params  # not in the job hash either
    assert params["runtime.batch_size"] == "4" and params["model.name_or_path"] == "builtin:tiny-bert"
    assert len(params["data.path"]) == 6000
    assert params["data.columns.text_a"] == "q" and params["data.splits"] == "[1, 2]" and params["data.name"] == "null"


def test_import_of_hand_made_records_and_default_store_under_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    write_record(tmp_path / "runs" / "a")
    write_record(tmp_path / "runs" / "b", status="failed", batch_size=8,
                 error={"type": "RuntimeError", "message": "boom"})
    monkeypatch.chdir(tmp_path)
    assert mlflow_import.main(["runs"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == "mlflow: 2 runs created, 0 updated, 0 unchanged -> sqlite:///outputs/mlflow.db (experiment cpueval)"
    # the default store and its artifacts are under outputs/, nothing else beside the runs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs", "runs"]
    assert (tmp_path / "outputs" / "mlflow.db").is_file()
    runs = job_runs("sqlite:///outputs/mlflow.db")
    assert len(runs) == 2 and not sweep_runs("sqlite:///outputs/mlflow.db")  # plain runs: no sweep parent
    ok = runs[job_hash(json.loads((tmp_path / "runs" / "a" / "results.json").read_text())["config"])]
    assert ok.info.artifact_uri.startswith((tmp_path / "outputs" / "mlartifacts").as_uri())
    assert ok.data.metrics["metrics.f1"] == 42.5 and ok.data.metrics["latency_ms.p99"] == 11.0


def test_param_conflict_is_recorded_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow params cannot change; should two records of one job ever differ, the first value stays."""
    monkeypatch.setattr(mlflow_import, "_job_hash", lambda record: "deadbeef")
    uri, job_dir = store(tmp_path), tmp_path / "run"
    write_record(job_dir, status="failed", error={"type": "RuntimeError", "message": "boom"})
    mlflow_import.import_dirs([job_dir], uri)
    write_record(job_dir, batch_size=8)
    summary = mlflow_import.import_dirs([job_dir], uri)
    assert (summary.created, summary.updated) == (0, 1)
    run = job_runs(uri)["deadbeef"]
    assert run.data.params["runtime.batch_size"] == "4"
    assert run.data.tags["cpueval.param_conflicts"] == "runtime.batch_size"
    assert run.data.tags["cpueval.status"] == "ok" and "cpueval.reason" not in run.data.tags
    assert run.info.status == "FINISHED"


def test_user_errors_are_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    uri = store(tmp_path)
    assert mlflow_import.main([str(tmp_path / "nope"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err
    (tmp_path / "empty").mkdir()
    assert mlflow_import.main([str(tmp_path / "empty"), "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no results.json under" in err
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    assert mlflow_import.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err == "cpueval mlflow: error: mlflow is not installed: pip install 'cpueval[mlflow]'\n"


def test_the_subcommand_does_not_import_torch(tmp_path: Path) -> None:
    write_record(tmp_path / "run")
    code = ("import sys; from cpueval.app import main; sys.argv[1:] = ['mlflow', sys.argv[1], '--tracking-uri', "
            "sys.argv[2]]\ntry:\n    main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run"), store(tmp_path)], capture_output=True,
                         text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    assert out.stdout.splitlines()[-1] == "0 False", out.stderr[-2000:]


# -- a real sweep (slow) -----------------------------------------------------------------------------
def launch(sweep_dir: Path, cwd: Path, uri: str, fault: str = "") -> Outcome:
    """`cpueval -m` over GRID with the mlflow callback on, in-process from `cwd`; `fault` is injected by the
    test-only Hydra callback (tests/support/cpueval_faults.py; the one place this file knows how faults are
    injected)."""
    from cpueval_faults import launch_args

    return run_cpueval(["-m", f"hydra.sweep.dir={sweep_dir}", *FAST, *GRID, CALLBACKS,
                        f"hydra.callbacks.mlflow.tracking_uri={uri}", *(launch_args(fault) if fault else [])],
                       env={"MLFLOW_TRACKING_URI": None, "CPUEVAL_CACHE": str(sweep_dir.parent / "cache")}, cwd=cwd)


def records(sweep_dir: Path) -> dict[str, dict]:
    """Records by job hash."""
    return {p.parent.name.rsplit("__", 1)[1]: json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")}


def by_cell(sweep_dir: Path) -> dict[tuple[str, int], str]:
    """(precision, batch size) -> job hash."""
    return {(r["config"]["precision"]["name"], r["config"]["runtime"]["batch_size"]): h
            for h, r in records(sweep_dir).items()}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 4-job sweep (2 ok, 1 failed, 1 refused) launched with the mlflow callback on, from an empty
    working directory."""
    base = tmp_path_factory.mktemp("mlflow_sweep")
    cwd, sweep_dir = base / "cwd", base / "sweep"
    cwd.mkdir()
    uri = store(base)
    result = launch(sweep_dir, cwd, uri, fault=FAULTS)
    return {"dir": sweep_dir, "uri": uri, "cwd": cwd, "first": result}


@pytest.mark.slow
def test_the_callback_imports_the_sweep_once_per_job_and_a_reimport_changes_nothing(
        sweep: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep["first"].returncode == 1  # two jobs not ok
    assert "mlflow: 4 runs created, 0 updated, 0 unchanged -> " + sweep["uri"] in sweep["first"].log
    assert list(sweep["cwd"].iterdir()) == []  # nothing written where the sweep was launched
    before = {h: run.to_dictionary() for h, run in job_runs(sweep["uri"]).items()}
    assert set(before) == set(records(sweep["dir"])) and len(before) == 4

    capsys.readouterr()
    assert mlflow_import.main([str(sweep["dir"]), "--tracking-uri", sweep["uri"]]) == 0
    assert capsys.readouterr().out.startswith("mlflow: 0 runs created, 0 updated, 4 unchanged -> ")
    after = {h: run.to_dictionary() for h, run in job_runs(sweep["uri"]).items()}
    assert after == before
    (parent,) = sweep_runs(sweep["uri"])
    assert all(run["data"]["tags"]["mlflow.parentRunId"] == parent.info.run_id for run in after.values())
    report = {f.path for f in MlflowClient(tracking_uri=sweep["uri"]).list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/table.csv", "report/throughput.png"} <= report


@pytest.mark.slow
def test_params_metrics_and_tags_equal_results_json(sweep: dict[str, Any]) -> None:
    runs, recs = job_runs(sweep["uri"]), records(sweep["dir"])
    client = MlflowClient(tracking_uri=sweep["uri"])
    for job, record in recs.items():
        run = runs[job]
        config = leaves(job_config(record["config"]))
        assert run.data.params == {key: as_param(value) for key, value in config.items()}
        assert run.data.params["precision.name"] == record["config"]["precision"]["name"]
        assert run.data.params["runtime.batch_size"] == str(record["config"]["runtime"]["batch_size"])
        tags = run.data.tags
        assert tags["cpueval.job_hash"] == job == job_hash(record["config"])
        assert tags["cpueval.config_hash"] == record["config_hash"]
        assert tags["cpueval.status"] == record["status"]
        assert tags["cpueval.cpu.model"] == record["environment"]["cpu_model"]
        assert tags["cpueval.cpu.isa_flags"] == " ".join(record["environment"]["isa_flags"])
        assert tags["cpueval.versions.torch"] == record["environment"]["versions"]["torch"]
        assert tags["mlflow.runName"] == Path(record["run_dir"]).name
        if record["status"] != "ok":
            continue
        expected = {f"metrics.{k}": v for k, v in record["metrics"].items()}
        expected.update({f"throughput.{k}": v for k, v in record["throughput"].items()})
        expected.update({f"latency_ms.{k}": record["latency_ms"][k] for k in ("p50", "p90", "p99")})
        expected.update({"timing.prepare": record["timing"]["prepare"],
                         "memory.peak_rss_mb": record["memory"]["peak_rss_mb"]})
        assert {k: run.data.metrics[k] for k in expected} == expected
        assert run.info.status == "FINISHED"
        artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert {"results.json", "eval_results.json", "predictions.json"} <= artifacts
        logged = json.loads(Path(client.download_artifacts(run.info.run_id, "results.json",
                                                           str(sweep["dir"].parent / "dl" / job))).read_text())
        assert logged == record


@pytest.mark.slow
def test_failed_and_refused_jobs_show_status_and_reason(sweep: dict[str, Any]) -> None:
    runs, recs, cells = job_runs(sweep["uri"]), records(sweep["dir"]), by_cell(sweep["dir"])
    failed, refused = runs[cells[("bf16", 8)]], runs[cells[("fp32", 8)]]
    assert failed.data.tags["cpueval.status"] == "failed" and failed.info.status == "FAILED"
    assert failed.data.tags["cpueval.reason"].startswith("MemoryError: injected fault")
    assert refused.data.tags["cpueval.status"] == "refused" and refused.info.status == "FAILED"
    assert refused.data.tags["cpueval.reason"] == "Refused: " + recs[cells[("fp32", 8)]]["error"]["message"]
    assert "metrics.f1" not in failed.data.metrics and "metrics.f1" not in refused.data.metrics


@pytest.mark.slow
def test_a_resumed_sweep_updates_the_changed_run_only(sweep: dict[str, Any]) -> None:
    """Last in this file: it resumes the module's sweep (the failed job now runs ok)."""
    cells = by_cell(sweep["dir"])
    changed = cells[("bf16", 8)]
    client = MlflowClient(tracking_uri=sweep["uri"])
    before = {h: run.to_dictionary() for h, run in job_runs(sweep["uri"]).items()}
    (parent,) = sweep_runs(sweep["uri"])

    resumed = launch(sweep["dir"], sweep["cwd"], sweep["uri"])  # same sweep, no faults: the failed job re-runs
    assert resumed.returncode == 3  # the refusal stands, nothing failed
    assert "mlflow: 0 runs created, 1 updated, 3 unchanged -> " in resumed.log
    after = {h: run.to_dictionary() for h, run in job_runs(sweep["uri"]).items()}
    assert {h for h in after if after[h] != before[h]} == {changed}
    run, record = job_runs(sweep["uri"])[changed], records(sweep["dir"])[changed]
    assert run.info.run_id == before[changed]["info"]["run_id"]
    assert run.data.tags["cpueval.status"] == "ok" and run.info.status == "FINISHED"
    assert "cpueval.reason" not in run.data.tags and run.data.tags["cpueval.revision"] == "2"
    assert run.data.metrics["metrics.f1"] == record["metrics"]["f1"]
    assert run.data.metrics["throughput.forward_examples_per_s"] == record["throughput"]["forward_examples_per_s"]
    history = client.get_metric_history(run.info.run_id, "timing.total")
    assert sorted(m.step for m in history) == [1, 2] and run.data.metrics["timing.total"] == record["timing"]["total"]
    (same_parent,) = sweep_runs(sweep["uri"])
    assert same_parent.info.run_id == parent.info.run_id
    assert same_parent.data.tags["cpueval.report_sha256"] != parent.data.tags["cpueval.report_sha256"]
