"""The verdict (cpueval/verdict.py) over hand-made records built through the typed record: the fastest
configuration that passes the gate wins, never a gate-failing, failed, refused or ungated row; the
end-to-end speed-up comes from the recorded timings; the scenario is part of the grouping and of the
job identity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cpueval import identity, report, verdict

from hand_records import make_record, row, write  # tests/support


def finished_badly(record: dict[str, Any], status: str) -> dict[str, Any]:
    """An ok-looking record (fast, accurate) whose status says it did not finish: it must never win."""
    record.update(status=status, error={"type": "RuntimeError", "message": f"{status} on purpose"})
    return record


def timed(record: dict[str, Any], **seconds: float) -> dict[str, Any]:
    record["timing"].update(seconds)
    return record


def scenario(record: dict[str, Any], name: str, p90: float) -> dict[str, Any]:
    record["config"]["runtime"]["scenario"] = name
    record["config_hash"] = identity.job_hash(record["config"])
    record["latency_ms"].update(p90=p90)
    return record


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    write(root, "eager_fp32", make_record(f1=80.0, speed=10.0))
    write(root, "jit_fp32", make_record("jit", f1=80.0, speed=15.0))
    write(root, "eager_bf16", make_record(precision="bf16", f1=79.5, speed=20.0))  # 99.4 %: passes
    write(root, "eager_int8", make_record(precision="int8", f1=78.0, speed=30.0))  # 97.5 %: fails the gate
    write(root, "compile_fp32", finished_badly(make_record("compile", speed=100.0), "failed"))
    write(root, "ipex_fp32", finished_badly(make_record("ipex", speed=200.0), "refused"))
    write(root, "jit_fp32_bs32", make_record("jit", batch_size=32, speed=40.0))  # no baseline: ungated
    return root


def only_verdict(root: Path) -> dict[str, Any]:
    entries = report.verdict_entries(report.build_table([root]))
    assert len(entries) == 1
    return entries[0]


def test_the_fastest_row_that_passes_the_gate_wins(sweep: Path) -> None:
    entry = only_verdict(sweep)
    assert entry["winner"]["job"] == "eager_bf16" and entry["runner_up"]["job"] == "jit_fp32"
    assert entry["speedup_vs_eager_fp32"] == pytest.approx(20.0 / 10.0)
    assert entry["speedup_vs_best_fp32"] == pytest.approx(20.0 / 15.0) and entry["best_fp32"] == "jit_fp32"
    assert entry["winner"]["preparation_s"] == pytest.approx(0.5 + 0.1)  # prepare + warm-up of make_record
    assert entry["candidates"] == 3 and entry["rows"] == 7
    assert entry["excluded"] == {"FAIL": 1, "failed": 1, "refused": 1, "no baseline": 1}
    text = verdict.line(entry)
    assert "eager/bf16 bs=16 2 threads 20.0 ex/s, ×2.00 vs eager fp32, ×1.33 vs best fp32, prep 0.60 s" in text
    assert "runner-up jit/fp32 bs=16 2 threads 15.0 ex/s" in text and "Test CPU" in text


def test_no_winner_when_every_fast_row_fails(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    write(root, "eager_fp32", finished_badly(make_record(speed=10.0), "failed"))
    write(root, "eager_int8", make_record(precision="int8", speed=30.0))  # no ok baseline to gate against
    entry = only_verdict(root)
    assert entry["winner"] is None and entry["runner_up"] is None
    assert "no configuration passes the accuracy gate" in verdict.line(entry)


def test_end_to_end_speedup_from_recorded_timings(tmp_path: Path) -> None:
    """Steady state: 17 vs 10 examples/s. End to end: (1 + 0.5 + 8.5) s vs (44 + 1 + 5) s = 10 / 50."""
    root = tmp_path / "sweep"
    write(root, "eager_fp32", timed(make_record(speed=10.0), prepare=1.0, warmup=0.5, forward_loop=8.5))
    write(root, "compile_fp32", timed(make_record("compile", speed=17.0), prepare=44.0, warmup=1.0, forward_loop=5.0))
    df = report.build_table([root])
    compiled = row(df, "compile_fp32")
    assert compiled["speedup"] == pytest.approx(1.7)
    assert compiled["end_to_end_s"] == pytest.approx(50.0)
    assert compiled["e2e_speedup"] == pytest.approx(10.0 / 50.0)
    assert "e2e speed-up" in report.markdown(df, 0.99, "mode=eager,precision=fp32", [])
    assert only_verdict(root)["winner"]["e2e_speedup"] == pytest.approx(0.2)


def test_latency_scenario_is_its_own_group_ranked_by_p90(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    write(root, "eager_fp32", make_record(speed=10.0))
    write(root, "eager_fp32_latency", scenario(make_record(speed=5.0), "latency", p90=20.0))
    write(root, "jit_fp32_latency", scenario(make_record("jit", speed=4.0), "latency", p90=10.0))
    entries = {e["scenario"]: e for e in report.verdict_entries(report.build_table([root]))}
    assert set(entries) == {"throughput", "latency"}
    assert entries["throughput"]["winner"]["job"] == "eager_fp32"
    latency = entries["latency"]
    assert latency["winner"]["job"] == "jit_fp32_latency"  # lower p90 despite fewer examples/s
    assert latency["speedup_vs_eager_fp32"] == pytest.approx(20.0 / 10.0)
    assert "latency: jit/fp32 bs=1 2 threads p90 10.0 ms" in verdict.line(latency)  # one request at a time


def test_scenario_is_part_of_the_job_identity_and_the_default_keeps_old_hashes() -> None:
    old = make_record()["config"]  # written before runtime.scenario existed
    with_default = json.loads(json.dumps(old))
    with_default["runtime"].update(scenario="throughput", instances=1, cores_per_instance=None)
    assert identity.job_hash(with_default) == identity.job_hash(old)
    with_default["runtime"]["scenario"] = "latency"
    assert identity.job_hash(with_default) != identity.job_hash(old)


def test_verdict_cli_prints_the_lines_and_writes_json(sweep: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    assert report.main([str(sweep), "--out", str(out), "--verdict"]) == 0
    printed = capsys.readouterr().out.splitlines()
    saved = json.loads((out / report.VERDICT_FILE).read_text())
    assert printed[0] == saved[0]["line"] and saved[0]["winner"]["job"] == "eager_bf16"
    assert not (out / "report.md").exists()
    report.write_report([sweep], tmp_path / "full")
    assert "## Verdict" in (tmp_path / "full" / "report.md").read_text()
    assert json.loads((tmp_path / "full" / report.VERDICT_FILE).read_text()) == saved


def test_a_sample_of_the_data_is_its_own_group(tmp_path: Path) -> None:
    root = tmp_path / "sweep"
    write(root, "eager_fp32_all", make_record(speed=10.0))
    sample = make_record(speed=12.0, fingerprint="fp500")
    sample["config"]["data"]["max_eval_samples"] = 500
    sample["config_hash"] = identity.job_hash(sample["config"])
    write(root, "eager_fp32_500", sample)
    entries = report.verdict_entries(report.build_table([root]))
    assert [(e["max_eval_samples"], e["winner"]["job"]) for e in entries] == [("-", "eager_fp32_all"),
                                                                              ("500", "eager_fp32_500")]
    assert "sample_squad.json (first 500) |" in verdict.line(entries[1])
