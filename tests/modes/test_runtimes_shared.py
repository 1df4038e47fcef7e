"""The real minilm-squad through the whole pipeline (in-process) under mode=onnxruntime: the same SQuAD
answers as eager fp32. Needs ../shared (skipped when it is absent) and onnxruntime.

Bound: F1 within 0.1 on the first 100 dev questions. The runtimes differ from eager by ~1e-5 in the
logits (../shared/README.md), which can flip an answer span only on an exact near-tie; one flipped
answer out of 100 moves F1 by up to 1.0, so 0.1 allows partial-overlap changes but no lost question.
"""

from __future__ import annotations

import pytest

from inprocess import compose_config
from cpueval.pipeline import execute

pytestmark = [pytest.mark.shared, pytest.mark.slow]

QUESTIONS = 100


def run(tmp_path, *overrides: str):
    cfg = compose_config(["model=minilm_squad", "data=squad_v1_dev", f"data.max_eval_samples={QUESTIONS}",
                          "runtime.progress=false", *overrides])
    return execute(cfg, tmp_path / "-".join(o.replace("=", "_") for o in overrides))


def test_onnxruntime_fp32_answers_as_eager_fp32(shared_dir, tmp_path, monkeypatch):
    for module in ("onnxruntime", "onnx", "onnxscript"):
        pytest.importorskip(module, reason="mode=onnxruntime needs pip install -e '.[onnx]'")
    monkeypatch.setenv("CPUEVAL_SHARED", str(shared_dir))
    eager = run(tmp_path, "mode=eager")
    onnx = run(tmp_path, "mode=onnxruntime", "runtime.parity_batches=2")
    assert eager.status == onnx.status == "ok"
    assert onnx.actual.mode == "onnxruntime" and onnx.actual.details["export"]["cache"] in ("miss", "hit")
    assert abs(onnx.metrics["f1"] - eager.metrics["f1"]) <= 0.1, (onnx.metrics, eager.metrics)
    assert onnx.parity.max_abs_diff < 1e-4 and onnx.parity.identical_predictions == 1.0
    assert eager.metrics["f1"] > 75.0  # a real model on real questions, not noise
