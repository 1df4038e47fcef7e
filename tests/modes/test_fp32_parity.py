"""Every mode in fp32 matches eager fp32, also at lengths other than the one prepare() saw.

Tolerance 1e-5 (absolute, on logits of magnitude ~0.1-1): fp32 modes differ from eager only by
summation order and fused kernels, i.e. a few ulps (1.2e-7 relative) per op over 2 layers of
32-64-wide sums, so ~1e-6 at worst; a baked-in shape or mask (the bugs this guards against)
moves logits by >1e-2.
"""

from __future__ import annotations

import pytest
from cpueval import plugins
from cpueval.errors import Refused
from cpueval.modes._common import create_mode
from cpueval.parity import compare_outputs

FP32_TOL = 1e-5

# Every registered mode (a new one is tested without editing this file); marks for the slow ones.
# (the runtimes export or convert the model first: tens of seconds each; tests/modes/test_runtimes.py
# checks their dynamic shapes quickly against a shared export)
MARKS = {"compile": pytest.mark.slow, "ipex": (pytest.mark.ipex, pytest.mark.slow), "ipex_jit": pytest.mark.ipex,
         "onnxruntime": pytest.mark.slow, "openvino": pytest.mark.slow}
MODES = [pytest.param(name, {}, id=name, marks=MARKS.get(name, ())) for name in plugins.names("mode")] + [
    pytest.param("jit", {"optimize_for_inference": True}, id="jit-ofi"),
]


@pytest.mark.parametrize("kind", ["qa", "cls"])
@pytest.mark.parametrize("name, fields", MODES)
def test_fp32_matches_eager(name, fields, kind, tiny, caps, example_batch, loop_batches, reference):
    if name == "compile" and kind == "cls":
        pytest.skip("one compile per precision keeps the suite short; QA covers the token-axis outputs")
    try:
        prepared, outputs = tiny.run_mode(create_mode(name, **fields), tiny.precision("fp32"), kind, example_batch,
                                          loop_batches, caps)
    except Refused as refused:
        pytest.skip(f"refused here: {refused}")
    assert prepared.mode == name
    lengths = [tiny.real_lengths(b) for b in loop_batches]
    parity = compare_outputs(reference(kind), outputs, lengths if kind == "qa" else None)
    assert parity["max_abs_diff"] < FP32_TOL, parity
    assert parity["identical_predictions"] == 1.0, parity
    for out in outputs:
        assert all(v.dtype.is_floating_point and v.dtype.itemsize == 4 for v in out.values())
    stats = prepared.stats()
    assert stats["distinct_shapes"] == len(set(tiny.LOOP_LENGTHS))  # warm-up calls are not counted
    if name == "compile":
        # automatic dynamic shapes: prepare's half-length warm-up call already built the
        # symbolic-length graph, so the loop's new lengths compile nothing more.
        assert stats["prepare_frames_compiled"] == 2
        assert stats["recompiles"] == 0 and stats["graph_breaks"] == 0
    if name.endswith("jit"):
        assert stats["traced_shape"] == list(example_batch["input_ids"].shape)
        assert stats["untraced_shapes_ran"] is True
