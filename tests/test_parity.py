"""compare_outputs against hand-computed arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpueval.parity import compare_outputs

NEG = -1.0  # a padding position's logit


def test_qa_masks_padding_and_needs_start_and_end():
    # 2 examples, L=4; example 1 has real length 2. Reference argmax: start [1, 0], end [2, 1].
    ref = {"start_logits": np.array([[0.0, 3.0, 1.0, 0.0], [2.0, 1.0, NEG, NEG]]),
           "end_logits": np.array([[0.0, 1.0, 3.0, 0.0], [1.0, 2.0, NEG, NEG]])}
    # Candidate: start identical except a huge change on padding (ignored: diff and argmax);
    # end of example 0 moves to position 1 (diff 2.5 at pos 1), example 1 unchanged, +0.25 at pos 0.
    cand = {"start_logits": np.array([[0.0, 3.0, 1.0, 0.0], [2.0, 1.0, 9.0, 9.0]]),
            "end_logits": np.array([[0.0, 3.5, 3.0, 0.0], [1.25, 2.0, NEG, NEG]])}
    result = compare_outputs([ref], [cand], lengths=[4, 2])
    assert result["outputs"]["start_logits"] == {"max_abs_diff": 0.0, "identical_predictions": 1.0, "predictions": 2}
    assert result["outputs"]["end_logits"] == {"max_abs_diff": 2.5, "identical_predictions": 0.5, "predictions": 2}
    assert result["identical_predictions"] == 0.5  # example 0 differs in end: only example 1 counts
    assert result["max_abs_diff"] == 2.5 and result["predictions"] == 2 and result["batches"] == 1
    # Without lengths the padding counts: start differs by 10 at example 1 and its argmax moves to 2.
    unmasked = compare_outputs([ref], [cand])
    assert unmasked["outputs"]["start_logits"]["max_abs_diff"] == 10.0
    assert unmasked["outputs"]["start_logits"]["identical_predictions"] == 0.5


def test_classification_argmax_over_classes_across_batches():
    ref = [{"logits": np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}, {"logits": np.array([[0.0, 0.0, 1.0]])}]
    cand = [{"logits": torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.4, 0.5]])}, {"logits": torch.tensor([[0.0, 0.0, 1.0]])}]
    result = compare_outputs(ref, cand)
    out = result["outputs"]["logits"]
    assert out["max_abs_diff"] == pytest.approx(0.6)  # 1.0 -> 0.4
    assert out["identical_predictions"] == pytest.approx(2 / 3) and out["predictions"] == 3
    assert result["identical_predictions"] == pytest.approx(2 / 3) and result["batches"] == 2


def test_token_classification_counts_real_tokens_only():
    # 1 example, L=3, 2 labels, real length 2: token 2 is padding and its argmax flip is ignored.
    ref = {"logits": np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])}
    cand = {"logits": np.array([[[1.0, 0.0], [0.6, 0.5], [0.0, 1.0]]])}
    result = compare_outputs([ref], [cand], lengths=[[2]])  # per-batch lists work too
    assert result["outputs"]["logits"]["max_abs_diff"] == pytest.approx(0.6)
    assert result["outputs"]["logits"]["identical_predictions"] == 0.5
    assert result["outputs"]["logits"]["predictions"] == 2


def test_bf16_tensors_and_identical_outputs():
    t = torch.tensor([[0.5, 1.5]], dtype=torch.bfloat16)
    result = compare_outputs([{"logits": t}], [{"logits": t.clone()}])
    assert result["max_abs_diff"] == 0.0 and result["identical_predictions"] == 1.0


@pytest.mark.parametrize(
    "ref, cand, lengths, message",
    [
        ([{"logits": np.zeros((1, 2))}], [], None, "1 reference batches vs 0"),
        ([{"logits": np.zeros((1, 2))}], [{"scores": np.zeros((1, 2))}], None, "outputs"),
        ([{"logits": np.zeros((1, 2))}], [{"logits": np.zeros((1, 3))}], None, "shape mismatch"),
        ([{"start_logits": np.zeros((2, 2))}], [{"start_logits": np.zeros((2, 2))}], [2], "lengths cover 1"),
        ([{"start_logits": np.zeros((1, 2))}], [{"start_logits": np.zeros((1, 2))}], [2, 2], "batches hold 1"),
    ],
)
def test_mismatches_are_errors(ref, cand, lengths, message):
    with pytest.raises(ValueError, match=message):
        compare_outputs(ref, cand, lengths)
