"""bf16 and int8 run under every mode they allow and stay close to eager fp32.

Tolerances are absolute, on the tiny random model's logits (|logit| <= 0.3, std 0.1), about 10x
what was observed, and 10x below what a broken conversion gives (wrong scale, lost mask, a
layer left unconverted or cast wrong: differences of the order of the logits' std, 0.1):
  bf16 autocast: 8-bit mantissa, 2^-8 relative = 1e-3 on these logits; observed 9e-4, bound 1e-2.
  bf16 cast:     softmax and layernorm in bf16 too; observed 1.8e-3, bound 2e-2.
  int8:          8-bit weights and activations, ~1/127 of each matmul's range; observed 5.6e-3,
                 bound 5e-2.
Argmax agreement: random logits are close together, so near-ties may flip; require >= 75%
(observed 100%).
"""

from __future__ import annotations

import pytest
import torch

from cpueval.modes._ipex import ipex_status
from cpueval.errors import Refused
from cpueval.modes._common import create_mode
from cpueval.parity import compare_outputs

CASES = [
    # mode, precision, precision fields, max abs diff bound, min identical predictions
    pytest.param("eager", "bf16", {"weights": "autocast"}, 1e-2, 0.75, id="eager-bf16-autocast"),
    pytest.param("eager", "bf16", {"weights": "cast"}, 2e-2, 0.75, id="eager-bf16-cast"),
    pytest.param("jit", "bf16", {"weights": "autocast"}, 1e-2, 0.75, id="jit-bf16-autocast"),
    pytest.param("jit", "bf16", {"weights": "cast"}, 2e-2, 0.75, id="jit-bf16-cast"),
    pytest.param("eager", "int8", {"backend": "ao_dynamic"}, 5e-2, 0.75, id="eager-int8-ao_dynamic"),
    pytest.param("jit", "int8", {"backend": "ao_dynamic"}, 5e-2, 0.75, id="jit-int8-ao_dynamic"),
    pytest.param("compile", "bf16", {"weights": "autocast"}, 1e-2, 0.75, id="compile-bf16-autocast",
                 marks=pytest.mark.slow),
    pytest.param("compile", "int8", {"backend": "ao_dynamic"}, 5e-2, 0.75, id="compile-int8-ao_dynamic",
                 marks=pytest.mark.slow),
    pytest.param("compile", "int8", {"backend": "torchao"}, 5e-2, 0.75, id="compile-int8-torchao",
                 marks=pytest.mark.slow),
    pytest.param("ipex", "bf16", {"weights": "autocast"}, 1e-2, 0.75, id="ipex-bf16-autocast", marks=pytest.mark.ipex),
    pytest.param("ipex_jit", "bf16", {"weights": "autocast"}, 1e-2, 0.75, id="ipex_jit-bf16-autocast",
                 marks=pytest.mark.ipex),
]


@pytest.mark.parametrize("mode, prec, fields, max_diff, min_identical", CASES)
def test_runs_and_stays_close(mode, prec, fields, max_diff, min_identical, tiny, caps, example_batch, loop_batches,
                              reference):
    if mode.startswith("ipex") and not ipex_status()["matches_torch"]:
        pytest.skip("needs intel-extension-for-pytorch matching torch (the IPEX environment)")
    if fields.get("backend") == "torchao":
        pytest.importorskip("torchao.quantization")
    precision = tiny.precision(prec, **fields)
    try:
        prepared, outputs = tiny.run_mode(create_mode(mode), precision, "qa", example_batch, loop_batches, caps)
    except Refused as refused:  # e.g. IPEX bf16 on an AVX2-only CPU: the refusal itself is tested in test_refusals
        pytest.skip(f"refused on this CPU: {refused}")
    assert prepared.mode == mode
    assert all(v.dtype == torch.float32 for out in outputs for v in out.values())
    lengths = [tiny.real_lengths(b) for b in loop_batches]
    parity = compare_outputs(reference("qa"), outputs, lengths)
    assert 0 < parity["max_abs_diff"] < max_diff, parity  # > 0: the conversion really happened
    assert parity["identical_predictions"] >= min_identical, parity
