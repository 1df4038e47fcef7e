"""Real fine-tuned models from ../shared (skipped when it is absent; CI has it)."""

from __future__ import annotations

import json

import pytest

from cpueval.metrics import squad_v1
from inprocess import run_cpueval

pytestmark = [pytest.mark.shared, pytest.mark.slow]


QUESTIONS = 200


def test_minilm_squad_first_dev_questions(shared_dir, tmp_path):
    run_dir = tmp_path / "run"
    result = run_cpueval(["model=minilm_squad", "data=squad_v1_dev", f"data.max_eval_samples={QUESTIONS}",
                          "runtime.progress=false", f"hydra.run.dir={run_dir}"], env={"CPUEVAL_SHARED": str(shared_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "ok" and record["data"]["num_examples"] == QUESTIONS
    # 83.2 F1 on the full dev set after training; the first 200 questions land near it (88.4 measured),
    # a bug lands far off
    assert 75.0 <= record["metrics"]["f1"] <= 92.0
    assert record["metrics"]["exact_match"] <= record["metrics"]["f1"]
    # the written predictions score exactly what the record says (official v1.1 metric on the file)
    predictions = json.loads((run_dir / "predictions.json").read_text())
    dev = json.loads((shared_dir / "data/squad/dev-v1.1.json").read_text())
    references = {qa["id"]: [a["text"] for a in qa["answers"]]
                  for article in dev["data"] for p in article["paragraphs"] for qa in p["qas"]}
    references = {qid: references[qid] for qid in predictions}
    assert len(predictions) == QUESTIONS
    assert squad_v1(predictions, references) == record["metrics"]
    assert record["model"]["builtin_random_weights"] is False
    assert record["model"]["resolved_path"].endswith("minilm-squad")

