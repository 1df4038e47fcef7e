"""torch.compile's recompiles are counted, and hitting the recompile limit fails loudly."""

from __future__ import annotations

import pytest

from cpueval.modes._common import create_mode

pytestmark = pytest.mark.slow


def test_static_shapes_recompile_once_per_new_length(tiny, caps, example_batch):
    # dynamic=false: one graph per shape. prepare() compiles the example (rows x 16) and its
    # half-rows, half-length cut; the loop's rows x 8 is a new shape, compiled once.
    lengths = [16, 8, 8, 16]
    batches = [tiny.make_batch(length) for length in lengths]
    mode = create_mode("compile", dynamic=False, recompile_limit=3)
    prepared, _ = tiny.run_mode(mode, tiny.precision("fp32"), "qa", example_batch, batches, caps)
    stats = prepared.stats()
    assert stats["prepare_frames_compiled"] == 2
    assert stats["recompiles"] == 1  # length 8 at full rows, once for its two calls
    assert stats["distinct_shapes"] == 2 and stats["calls"] == 4
    assert stats["graph_breaks"] == 0
    # A fourth shape exceeds recompile_limit=3: dynamo would run it eagerly and silently; here it raises.
    with pytest.raises(Exception, match="(?i)recompile"):
        prepared.forward(tiny.make_batch(24))

