"""What each precision does to a model and to the forward context."""

from __future__ import annotations

import pytest
import torch

from cpueval.precisions import create_precision
from cpueval.precisions.base import Precision


def make(name: str, **fields) -> Precision:
    return create_precision(name, **fields)


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 8)).eval()


def test_fp32_changes_nothing():
    model = small_model()
    p = make("fp32")
    assert p.convert(model) is model and p.compute_dtype == torch.float32
    with p.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_autocast_keeps_fp32_weights_and_computes_in_bf16():
    p = make("bf16")
    model = p.convert(small_model())
    assert all(t.dtype == torch.float32 for t in model.parameters())
    with torch.no_grad(), p.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert model(torch.randn(2, 64)).dtype == torch.bfloat16
    assert p.compute_dtype == torch.bfloat16


def test_bf16_cast_casts_weights_and_no_autocast():
    p = make("bf16", weights="cast")
    model = p.convert(small_model())
    assert all(t.dtype == torch.bfloat16 for t in model.parameters())
    with p.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_int8_ao_dynamic_quantizes_every_linear():
    model = make("int8").convert(small_model())
    dynamic_linear = torch.ao.nn.quantized.dynamic.Linear
    assert sum(isinstance(m, dynamic_linear) for m in model.modules()) == 2
    assert not any(type(m) is torch.nn.Linear for m in model.modules())


def test_int8_torchao_quantizes_linear_weights():
    pytest.importorskip("torchao.quantization")
    model = make("int8", backend="torchao").convert(small_model())
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert weights and all("Int8" in type(w).__name__ for w in weights)


@pytest.mark.parametrize("backend", ["ao_dynamic", "torchao"])
def test_int8_stays_close_on_a_small_model(backend):
    if backend == "torchao":
        pytest.importorskip("torchao.quantization")
    x = torch.randn(4, 64)
    with torch.no_grad():
        ref = small_model()(x)
        out = make("int8", backend=backend).convert(small_model())(x)
    # 8-bit: ~1/127 of the activations' range per matmul; outputs here are ~0.5.
    assert 0 < (out - ref).abs().max() < 2e-2
