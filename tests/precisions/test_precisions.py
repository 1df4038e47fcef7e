"""What each precision does to a model and to the forward context."""

from __future__ import annotations

import copy

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


def test_int8_weights_option_is_checked():
    from cpueval.errors import UserError

    assert make("int8").config.weights == "per_channel"  # the default: per-tensor loses ~5 F1 on minilm-squad
    with pytest.raises(UserError, match="precision.weights"):
        make("int8", weights="per_row")
    with pytest.raises(UserError, match="backend=ao_dynamic"):
        make("int8", backend="torchao", weights="per_tensor")


@pytest.mark.parametrize("weights, qscheme", [("per_channel", torch.per_channel_affine),
                                              ("per_tensor", torch.per_tensor_affine)])
def test_int8_ao_dynamic_weight_granularity(weights, qscheme):
    model = make("int8", weights=weights).convert(small_model())
    packed = [m.weight() for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(packed) == 2 and all(w.qscheme() == qscheme for w in packed)
    if weights == "per_channel":
        assert packed[0].q_per_channel_scales().numel() == 64


def test_int8_per_channel_handles_an_outlier_row():
    # One row with weights ~40x the others (as minilm-squad's FFN output projections): a per-tensor scale
    # leaves the other rows a few levels; per-channel keeps them accurate.
    model = small_model()
    with torch.no_grad():
        model[2].weight[0] *= 40
    x = torch.randn(16, 64)
    with torch.no_grad():
        ref = model(x)[:, 1:]
        errs = {w: (make("int8", weights=w).convert(copy.deepcopy(model))(x)[:, 1:] - ref).abs().max().item()
                for w in ("per_channel", "per_tensor")}
    assert errs["per_channel"] * 4 < errs["per_tensor"]


@pytest.mark.parametrize("backend", ["ao_dynamic", "torchao"])
def test_int8_skip_modules_stay_fp32(backend):
    if backend == "torchao":
        pytest.importorskip("torchao.quantization")
    p = make("int8", backend=backend, skip_modules=["2"])  # fnmatch on qualified names: "0", "2" here
    model = p.convert(small_model())
    assert type(model[2]) is torch.nn.Linear and type(model[2].weight) is torch.nn.Parameter
    assert model[2].weight.dtype == torch.float32
    if backend == "ao_dynamic":
        assert isinstance(model[0], torch.ao.nn.quantized.dynamic.Linear)
    else:
        assert "Int8" in type(model[0].weight).__name__
    assert p.details() == {"backend": backend, "weights": "per_channel",
                           "activations": "per_token" if backend == "torchao" else "per_tensor",
                           "quantized_linear": 1, "fp32_linear": ["2"]}


def test_int8_skip_modules_glob_and_typo():
    from cpueval.errors import UserError

    model = make("int8", skip_modules=["*"]).convert(small_model())
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())
    with pytest.raises(UserError, match="match no Linear"):
        make("int8", skip_modules=["qa_outputs"]).convert(small_model())


def test_precision_details_default_empty():
    assert make("fp32").details() == {} and make("int8").details() == {}
