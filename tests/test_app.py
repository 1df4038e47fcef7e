"""The Hydra app end to end, and every error a user can make. The default job runs once as a user
runs it (the console script in a new process); the other runs go through the same entry in-process
(tests/support/inprocess.py): a new process would prove nothing more."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cpueval.data import fingerprint, load_examples
from cpueval.config import DataConfig
from inprocess import Outcome, run_cpueval

SAMPLE = Path(__file__).resolve().parent.parent / "cpueval" / "assets" / "sample_squad.json"


def cpueval(*args: str) -> Outcome:
    return run_cpueval(args, env={"HYDRA_FULL_ERROR": None})


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The README's main job, as the console script runs it."""
    run_dir = tmp_path_factory.mktemp("default") / "run"
    result = subprocess.run([sys.executable, "-m", "cpueval", f"hydra.run.dir={run_dir}", "runtime.progress=false"],
                            capture_output=True, text=True, env={**os.environ, "HYDRA_FULL_ERROR": "0"}, timeout=600)
    return result, run_dir


def test_default_job_runs_offline_and_writes_complete_files(default_run):
    result, run_dir = default_run
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "ok"
    assert record["requested"] == {"mode": "eager", "precision": "fp32"}
    assert record["actual"]["mode"] == "eager" and record["actual"]["precision"] == "fp32"
    assert record["model"]["builtin_random_weights"] is True
    assert any("RANDOM weights" in w for w in record["warnings"])
    examples = json.loads(SAMPLE.read_text())
    question_ids = [qa["id"] for a in examples["data"] for p in a["paragraphs"] for qa in p["qas"]]
    assert record["data"]["num_examples"] == len(question_ids)
    assert record["data"]["fingerprint"] == fingerprint(load_examples(DataConfig(path=str(SAMPLE)))[0])
    for stage in ("model_load", "data_load", "tokenize", "batching", "prepare", "warmup", "forward_loop",
                  "postprocess", "metrics", "total"):
        assert record["timing"][stage] >= 0
    assert record["latency_ms"]["count"] == record["data"]["num_batches"]
    assert record["latency_ms"]["p50"] <= record["latency_ms"]["p90"] <= record["latency_ms"]["p99"]
    assert record["memory"]["peak_rss_mb"] > 0
    env = record["environment"]
    assert env["cpu_model"] and env["versions"]["torch"] and "isa_flags" in env
    assert len(record["model"]["weights_sha256"]) == 64 and len(record["model"]["config_sha256"]) == 64
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert sorted(predictions) == sorted(question_ids)
    assert all(isinstance(answer, str) for answer in predictions.values())
    hf = json.loads((run_dir / "eval_results.json").read_text())
    assert set(hf) >= {"eval_exact_match", "eval_f1", "eval_samples", "eval_runtime", "eval_samples_per_second"}
    assert hf["eval_samples"] == record["data"]["num_features"]
    assert hf["eval_f1"] == record["metrics"]["f1"]
    assert (run_dir / ".hydra" / "config.yaml").exists() and (run_dir / ".hydra" / "overrides.yaml").exists()
    assert not list(run_dir.glob(".*.tmp"))


def test_default_job_prints_a_summary_with_the_warning(default_run):
    result, run_dir = default_run
    assert "cpueval summary" in result.stdout
    assert "forward loop" in result.stdout and str(run_dir) in result.stdout
    assert "RANDOM weights" in result.stdout and "model.name_or_path=" in result.stdout


def test_pad_to_max_length_gives_the_same_predictions_with_more_padding(default_run, tmp_path):
    _, dynamic_dir = default_run
    run_dir = tmp_path / "padded"
    result = cpueval(f"hydra.run.dir={run_dir}", "runtime.progress=false", "task.pad_to_max_length=true")
    assert result.returncode == 0, result.stderr[-2000:]
    padded, dynamic = (json.loads((d / "results.json").read_text()) for d in (run_dir, dynamic_dir))
    assert padded["data"]["padding_share"] > dynamic["data"]["padding_share"]
    assert json.loads((run_dir / "predictions.json").read_text()) == json.loads((dynamic_dir / "predictions.json").read_text())


def one_line_error(result: Outcome) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors, result.stderr[-2000:]
    return errors[0]


@pytest.mark.parametrize("overrides,expected", [
    (["model.name_or_path=/nonexistent/model"], "model.name_or_path=/nonexistent/model"),
    (["data.path=/nonexistent/dev.json"], "data.path=/nonexistent/dev.json"),
    (["task.doc_stride=384"], "task.doc_stride=384"),
    (["task.max_seq_length=24", "task.doc_stride=8"], "leaves no room for context"),
    (["runtime.batch_size=0"], "runtime.batch_size=0"),
    (["data.max_eval_samples=0"], "data.max_eval_samples=0"),
    (["model=hub"], "model.name_or_path"),
])
def test_user_errors_are_one_line_with_non_zero_exit(tmp_path, overrides, expected):
    line = one_line_error(cpueval(f"hydra.run.dir={tmp_path}", "runtime.progress=false", *overrides))
    assert expected in line


def test_malformed_and_incomplete_data_files(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"data": [ {"title": "x", ')
    assert "broken.json" in one_line_error(cpueval(f"hydra.run.dir={tmp_path / 'a'}", f"data.path={broken}"))
    lacking = tmp_path / "lacking.jsonl"
    lacking.write_text(json.dumps({"id": "1", "question": "q?", "context": "c"}) + "\n")
    line = one_line_error(cpueval(f"hydra.run.dir={tmp_path / 'b'}", f"data.path={lacking}"))
    assert "answers" in line and "data.columns" in line


def test_unknown_split_of_a_local_dataset_directory(tmp_path):
    data_dir = tmp_path / "mydata"
    data_dir.mkdir()
    record = {"id": "1", "question": "q?", "context": "c", "answers": {"text": ["c"], "answer_start": [0]}}
    (data_dir / "validation.jsonl").write_text(json.dumps(record) + "\n")
    line = one_line_error(cpueval(f"hydra.run.dir={tmp_path / 'r'}", f"data.name={data_dir}", "data.path=null",
                                  "data.split=test"))
    assert "data.split=test" in line


def test_a_checkpoint_for_another_head_is_refused(tmp_path):
    from cpueval.assets.builtin import ensure_builtin_model

    classifier = ensure_builtin_model("builtin:tiny-bert", "AutoModelForSequenceClassification", ["neg", "pos"],
                                      cache_dir=tmp_path / "cache")
    line = one_line_error(cpueval(f"hydra.run.dir={tmp_path / 'r'}", f"model.name_or_path={classifier}"))
    assert "ForSequenceClassification" in line and "ForQuestionAnswering" in line


def test_unknown_group_option_lists_the_valid_ones(tmp_path):
    result = cpueval(f"hydra.run.dir={tmp_path}", "mode=turbo")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "Could not find 'mode/turbo'" in result.stderr and "eager" in result.stderr


def test_typo_and_wrong_type_fail_at_composition(tmp_path):
    typo = cpueval(f"hydra.run.dir={tmp_path}", "runtime.bach_size=8")
    assert typo.returncode != 0 and "bach_size" in typo.stderr
    wrong = cpueval(f"hydra.run.dir={tmp_path}", "runtime.batch_size=many")
    assert wrong.returncode != 0 and "batch_size" in wrong.stderr and "many" in wrong.stderr
