"""cpueval report on hand-made results.json files: speed-up, metric delta, gate, baseline
selection (same job otherwise, same host first), missing baseline, failed rows, and the files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cpueval import records, report
from hand_records import make_record, row, write  # tests/support

@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    write(root, "eager_fp32", make_record(f1=80.0, speed=10.0))
    write(root, "jit_fp32", make_record("jit", f1=80.0, speed=15.0))
    write(root, "eager_bf16", make_record(precision="bf16", f1=79.5, speed=20.0))   # 99.4 %: pass
    write(root, "eager_int8", make_record(precision="int8", f1=78.0, speed=30.0))   # 97.5 %: FAIL
    write(root, "ipex_fp32", make_record("ipex", status="refused"))
    # batch 32 has no eager fp32 run of its own: its jit row must not borrow batch 16's
    write(root, "jit_fp32_bs32", make_record("jit", batch_size=32, f1=80.0, speed=40.0))
    return root


def test_speedup_delta_gate(sweep: Path) -> None:
    df = report.build_table([sweep])
    assert row(df, "eager_fp32")["gate"] == "baseline"
    assert row(df, "eager_fp32")["speedup"] == pytest.approx(1.0)
    jit = row(df, "jit_fp32")
    assert jit["baseline_job"] == "eager_fp32"
    assert jit["speedup"] == pytest.approx(1.5)
    assert jit["metric_delta"] == pytest.approx(0.0)
    assert jit["gate"] == "pass"
    bf16 = row(df, "eager_bf16")
    assert bf16["speedup"] == pytest.approx(2.0) and bf16["metric_delta"] == pytest.approx(-0.5)
    assert bf16["gate"] == "pass" and bf16["gate_metric"] == "f1"
    int8 = row(df, "eager_int8")
    assert int8["speedup"] == pytest.approx(3.0) and int8["metric_delta"] == pytest.approx(-2.0)
    assert int8["gate"] == "FAIL"


def test_missing_baseline_and_failed_rows(sweep: Path) -> None:
    df = report.build_table([sweep])
    bs32 = row(df, "jit_fp32_bs32")
    assert bs32["gate"] == "no baseline" and pd.isna(bs32["speedup"]) and pd.isna(bs32["baseline_job"])
    refused = row(df, "ipex_fp32")
    assert refused["status"] == "refused" and refused["gate"] == "refused"
    assert "not here" in refused["reason"]
    assert pd.isna(refused["fwd_examples_s"])


def test_gate_threshold_and_metric_are_options(sweep: Path) -> None:
    df = report.build_table([sweep], gate=0.97)
    assert row(df, "eager_int8")["gate"] == "pass"  # 78 >= 0.97 * 80
    df = report.build_table([sweep], gate_metric="exact_match")
    assert row(df, "eager_int8")["metric_delta"] == pytest.approx(0.0)


def test_other_baseline(sweep: Path) -> None:
    df = report.build_table([sweep], baseline="mode=jit,precision=fp32")
    assert row(df, "eager_fp32")["speedup"] == pytest.approx(10.0 / 15.0)
    assert row(df, "jit_fp32")["gate"] == "baseline"
    assert row(df, "jit_fp32_bs32")["gate"] == "baseline"  # its own baseline now


def test_baseline_is_same_threads_cpu_and_data(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    write(root, "base_t2", make_record(speed=10.0, threads=2))
    write(root, "base_t1", make_record(speed=5.0, threads=1))
    write(root, "jit_t1", make_record("jit", speed=10.0, threads=1))
    write(root, "jit_otherdata", make_record("jit", speed=10.0, fingerprint="fp2"))
    df = report.build_table([root])
    assert row(df, "jit_t1")["baseline_job"] == "base_t1"
    assert row(df, "jit_t1")["speedup"] == pytest.approx(2.0)
    assert row(df, "jit_otherdata")["gate"] == "no baseline"


def test_baseline_ignores_mode_options_and_prefers_same_host(tmp_path: Path) -> None:
    """Dirs from two machines copied together: each row takes its own host's baseline."""
    root = tmp_path / "merged"
    write(root / "host_a", "eager", make_record(speed=10.0, host="a"))
    write(root / "host_b", "eager", make_record(speed=20.0, host="b", finished="2026-01-02T00:00:00+00:00"))
    write(root / "host_a", "compile", make_record("compile", speed=30.0, host="a",
                                                  mode_node={"name": "compile", "backend": "inductor"}))
    df = report.build_table([root / "host_a", root / "host_b"])
    compile_row = df[(df["mode"] == "compile")].iloc[0]
    assert compile_row["speedup"] == pytest.approx(3.0)
    assert Path(compile_row["run_dir"]).parent.name == "host_a"


def test_settings_that_do_not_change_results_keep_the_baseline(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    base = make_record(speed=10.0)
    base["config"]["runtime"].update(progress=False, cache_dir="/elsewhere", force=True)
    base["config"]["data"]["path"] = "/other/checkout/sample_squad.json"  # same content (fingerprint)
    write(root, "base", base)
    write(root, "jit", make_record("jit", speed=20.0))
    assert row(report.build_table([root]), "jit")["speedup"] == pytest.approx(2.0)


def test_files_written_and_markdown(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = report.write_report([sweep], out)
    assert path == out / "report.md"
    for name in ("table.csv", "table.parquet", "report.md", "throughput.png", "latency.png", "scaling.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "throughput.png").read_bytes()[:4] == b"\x89PNG"
    csv = pd.read_csv(out / "table.csv")
    parquet = pd.read_parquet(out / "table.parquet")
    assert len(csv) == len(parquet) == 6
    assert {"speedup", "metric_delta", "gate", "feature_cache", "latency_p99_ms", "cpu_flags"} <= set(parquet.columns)
    text = path.read_text()
    assert "![throughput](throughput.png)" in text and "![latency](latency.png)" in text
    assert "## Not ok" in text and "not here" in text
    assert "Common to all rows:" in text and "model **builtin:tiny-bert**" in text
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 + 6 and len({len(line) for line in table_lines}) == 1  # aligned columns
    assert "FAIL" in text and "no baseline" in text


def test_cli(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main([str(sweep), "--out", str(tmp_path / "r"), "--gate", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "| mode" in out and "FAIL" not in out
    assert report.main([str(tmp_path / "nothing-here")]) == 2
    assert report.main([str(sweep), "--baseline", "eager"]) == 2


def test_running_record_is_listed(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    record = make_record(status="ok")
    record.update(status="running")
    write(root, "killed", {k: record[k] for k in ("schema_version", "status", "config", "config_hash", "requested",
                                                  "started_at", "run_dir", "environment")})
    df = report.build_table([root])
    assert df.iloc[0]["status"] == "running" and "killed" in df.iloc[0]["reason"]


def test_parity_figures_reach_the_table_and_markdown(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    write(root, "eager_fp32", make_record())
    int8 = make_record(precision="int8", speed=20.0)
    int8["parity"] = {"max_abs_diff": 0.0625, "identical_predictions": 0.875, "predictions": 8, "batches": 2}
    write(root, "eager_int8", int8)
    df = report.build_table([root])
    assert row(df, "eager_int8")["parity_max_abs_diff"] == pytest.approx(0.0625)
    assert row(df, "eager_int8")["parity_identical"] == pytest.approx(0.875)
    assert pd.isna(row(df, "eager_fp32")["parity_identical"])
    text = report.markdown(df, 0.99, "mode=eager,precision=fp32", [])
    assert "same pred" in text and "0.875" in text and "6.2e-02" in text


def test_rows_of_two_sweeps_name_their_sweep(tmp_path: Path) -> None:
    write(tmp_path / "2026-01-01", "eager_fp32", make_record())
    write(tmp_path / "2026-01-02", "eager_fp32", make_record(speed=12.0))
    df = report.build_table([tmp_path / "2026-01-01", tmp_path / "2026-01-02"])
    assert sorted(df["sweep"]) == ["2026-01-01", "2026-01-02"]
    text = report.markdown(df, 0.99, "mode=eager,precision=fp32", [])
    assert "2026-01-01" in text and "2026-01-02" in text


def test_a_record_of_schema_version_1_still_loads_in_the_report(tmp_path: Path) -> None:
    """tests/data/results_v1.json: a real results.json as cpueval wrote it before the typed record."""
    v1 = json.loads((Path(__file__).parent / "data" / "results_v1.json").read_text())
    assert v1["schema_version"] == 1 and "class" in v1["model"]
    write(tmp_path / "old", "eager_fp32", v1)
    df = report.build_table([tmp_path / "old"])
    only = df.iloc[0]
    assert only["status"] == "ok" and only["gate"] == "baseline"
    assert only["metric.f1"] == pytest.approx(v1["metrics"]["f1"])
    assert only["fwd_examples_s"] == pytest.approx(v1["throughput"]["forward_examples_per_s"])
    assert only["threads"] == v1["threads"]["intra_op_threads"]
    loaded = records.from_dict(v1)
    assert loaded.model.model_class == v1["model"]["class"] and loaded.environment.native_precisions == {
        "bf16": False, "int8": False}
