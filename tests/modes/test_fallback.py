"""No silent fallback: a failing mode raises with the reason, unless config.fallback names a mode."""

from __future__ import annotations

import pytest
import torch

from cpueval.errors import UserError
from cpueval.modes._common import ModeFailed, create_mode
from cpueval.modes.base import PrepareContext


def fail_trace(*args, **kwargs):
    raise RuntimeError("injected trace failure")


def test_failure_raises_with_the_reason(monkeypatch, tiny, example_batch):
    monkeypatch.setattr(torch.jit, "trace", fail_trace)
    with pytest.raises(ModeFailed, match="mode=jit precision=fp32 failed while preparing: RuntimeError: injected") as e:
        create_mode("jit").prepare(tiny.build("qa"), tiny.precision("fp32"), PrepareContext(example_batch))
    assert isinstance(e.value, UserError)


def test_fallback_runs_the_named_mode_and_records_why(monkeypatch, tiny, example_batch, loop_batches, reference):
    monkeypatch.setattr(torch.jit, "trace", fail_trace)
    prepared = create_mode("jit", fallback="eager").prepare(tiny.build("qa"), tiny.precision("fp32"), PrepareContext(example_batch))
    assert prepared.mode == "eager"
    assert prepared.details["requested_mode"] == "jit"
    assert "injected trace failure" in prepared.details["fallback_reason"]
    for out, ref in zip((prepared.forward(b) for b in loop_batches), reference("qa")):
        assert torch.equal(out["start_logits"], ref["start_logits"])


def compiled_that_fails_on_first_call(model, **kwargs):
    def call(*args, **kw):
        raise RuntimeError("injected inductor failure")

    return call


def test_first_call_failures_count_as_preparation(monkeypatch, tiny, example_batch):
    # torch.compile only compiles at the first call: prepare() makes that call, so it fails there.
    monkeypatch.setattr(torch, "compile", compiled_that_fails_on_first_call)
    prepared = create_mode("compile", fallback="eager").prepare(tiny.build("qa"), tiny.precision("fp32"), PrepareContext(example_batch))
    assert prepared.mode == "eager" and "injected inductor failure" in prepared.details["fallback_reason"]


def test_fallback_that_is_refused_fails(monkeypatch, tiny, example_batch):
    pytest.importorskip("torchao.quantization")
    monkeypatch.setattr(torch, "compile", compiled_that_fails_on_first_call)
    int8 = tiny.precision("int8", backend="torchao")
    with pytest.raises(ModeFailed, match="fallback mode=eager is refused"):
        create_mode("compile", fallback="eager").prepare(int8.convert(tiny.build("qa")), int8, PrepareContext(example_batch))
