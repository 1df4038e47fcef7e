"""backend=pt2e_static: torchao's PT2E static int8 (cpueval/precisions/_pt2e.py) on the builtin tiny QA
model, calibrated on the sample's batches, then through the pipeline under mode=compile."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest
import torch

from inprocess import compose_config
from cpueval.errors import UserError
from cpueval.pipeline import execute
from cpueval.precisions import create_precision

pytest.importorskip("torchao.quantization.pt2e")


def tiny_model() -> torch.nn.Module:
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return BertForQuestionAnswering(config).eval()


def batches(lengths=(16, 24, 8)) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(1)
    return [{"input_ids": torch.randint(5, 100, (3, n)), "attention_mask": torch.ones(3, n, dtype=torch.long),
             "token_type_ids": torch.zeros(3, n, dtype=torch.long)} for n in lengths]


def test_pt2e_static_quantizes_the_linear_layers_it_is_not_told_to_skip() -> None:
    model = tiny_model()
    with torch.no_grad():
        reference = [model(**b).start_logits for b in batches()]
    precision = create_precision("int8", backend="pt2e_static", skip_modules=["qa_outputs"])
    quantized = precision.convert(model, batches())
    ops = collections.Counter(str(n.target) for n in quantized.graph.nodes if n.op == "call_function")
    # One int8 weight per quantized Linear (6 of the 7: qa_outputs skipped), dequantized per channel; the
    # activations are quantized per tensor once per distinct input (query/key/value share theirs): 4.
    assert ops["quantized_decomposed.dequantize_per_channel.default"] == 6
    assert ops["quantized_decomposed.quantize_per_tensor.default"] == 4
    details = precision.details()
    assert details["quantized_linear"] == 6 and details["fp32_linear"] == ["qa_outputs"]
    assert details["calibration_batches"] == 3 and details["activations"] == "per_tensor uint8, calibrated (minmax)"
    with torch.no_grad():
        for batch, ref in zip(batches((16, 24, 8)), reference):  # other lengths than the export's: dynamic
            out = quantized(**batch)["start_logits"]
            assert out.shape == ref.shape and torch.allclose(out, ref, atol=0.1)


def test_pt2e_static_needs_calibration_and_a_method_it_offers() -> None:
    precision = create_precision("int8", backend="pt2e_static")
    assert precision.needs_calibration(None)
    with pytest.raises(UserError, match="^precision.backend=pt2e_static calibrates activations"):
        precision.convert(tiny_model(), [])
    entropy = create_precision("int8", backend="pt2e_static", calibration={"method": "entropy"})
    with pytest.raises(UserError, match="^precision.calibration.method=entropy is not offered by backend=pt2e_static"):
        entropy.convert(tiny_model(), batches())


@pytest.mark.slow
def test_pt2e_static_runs_under_compile_and_records_what_calibrated(tmp_path: Path) -> None:
    cfg = compose_config(["runtime.progress=false", "runtime.batch_size=4", "mode=compile", "precision=int8",
                          "precision.backend=pt2e_static", "data.max_eval_samples=12",
                          "precision.calibration.samples=8", "runtime.parity_batches=1"])
    record = execute(cfg, tmp_path / "run")
    assert record.status == "ok" and record.actual.precision_details["backend"] == "pt2e_static"
    assert record.data.calibration.examples == 8 and record.data.calibration.method == "minmax"
    assert record.actual.precision_details["calibration_batches"] >= 2  # 8 questions' windows, 4 per batch
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["actual"]["mode"] == "compile" and saved["actual"]["precision_details"]["reduce_range"] is not None
    assert record.parity is not None and len(record.parity.batches_compared) == 1
