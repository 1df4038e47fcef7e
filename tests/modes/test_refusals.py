"""Combinations that cannot work are refused before the model loads, naming mode and precision."""

from __future__ import annotations

import re
import types

import pytest
import torch

from cpueval.environment import Capabilities
from cpueval.errors import Refused, UserError
from cpueval.modes import _ipex
from cpueval.modes._common import create_mode

AVX2_ONLY = Capabilities(cpu_model="test AVX2-only", flags=frozenset({"avx2", "fma"}))
SAPPHIRE = Capabilities(
    cpu_model="test AMX", flags=frozenset({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni",
                                           "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile"})
)


def ipex_installed(monkeypatch, version: str, matches: bool) -> None:
    monkeypatch.setattr(_ipex, "ipex_status", lambda: {"installed": True, "version": version, "matches_torch": matches})
    monkeypatch.setattr(_ipex, "import_ipex", lambda mode, precision: types.SimpleNamespace(__version__=version))


@pytest.mark.parametrize("mode", ["ipex", "ipex_jit"])
def test_ipex_absent_gives_the_install_hint(mode, monkeypatch, tiny):
    monkeypatch.setattr(_ipex, "ipex_status", lambda: {"installed": False, "version": None, "matches_torch": False})
    with pytest.raises(Refused, match=rf"^mode={mode} needs intel-extension-for-pytorch 2\.8 .*bash jobs/envs/ipex/build\.sh"):
        create_mode(mode).check(SAPPHIRE, tiny.precision("fp32"))


def test_ipex_absent_here_is_refused(tiny, caps):
    if _ipex.ipex_status()["installed"]:
        pytest.skip("IPEX is installed in this environment")
    with pytest.raises(Refused, match="intel-extension-for-pytorch 2.8"):
        create_mode("ipex").check(caps, tiny.precision("fp32"))


def test_ipex_version_mismatch_names_both(monkeypatch, tiny):
    ipex_installed(monkeypatch, "2.7.0+cpu", matches=False)
    with pytest.raises(Refused, match=rf"2\.7\.0\+cpu does not match torch {re.escape(torch.__version__)}"):
        create_mode("ipex").check(SAPPHIRE, tiny.precision("fp32"))


def test_ipex_bf16_needs_avx512(monkeypatch, tiny):
    ipex_installed(monkeypatch, torch.__version__, matches=True)
    create_mode("ipex").check(SAPPHIRE, tiny.precision("bf16"))
    with pytest.raises(Refused, match="mode=ipex_jit precision=bf16: IPEX refuses bf16"):
        create_mode("ipex_jit").check(AVX2_ONLY, tiny.precision("bf16"))
    create_mode("ipex_jit").check(AVX2_ONLY, tiny.precision("fp32"))


@pytest.mark.parametrize(
    "backend, mode",
    [("ao_dynamic", "ipex"), ("ao_dynamic", "ipex_jit"), ("torchao", "ipex"), ("torchao", "eager"), ("torchao", "jit")],
)
def test_int8_refuses_modes_it_cannot_run_with(backend, mode, tiny):
    with pytest.raises(Refused, match=rf"mode={mode} precision=int8 \(backend={backend}\): \S+"):
        tiny.precision("int8", backend=backend).check(SAPPHIRE, mode)


@pytest.mark.parametrize("backend, mode", [("ao_dynamic", "eager"), ("ao_dynamic", "jit"), ("ao_dynamic", "compile"), ("torchao", "compile")])
def test_int8_allows_what_works(backend, mode, tiny):
    if backend == "torchao":
        pytest.importorskip("torchao.quantization")
    tiny.precision("int8", backend=backend).check(SAPPHIRE, mode)


def test_emulation_warnings(tiny):
    bf16, int8 = tiny.precision("bf16"), tiny.precision("int8")
    bf16.check(SAPPHIRE, "eager")
    int8.check(SAPPHIRE, "eager")
    assert bf16.warnings == [] and not any("not native" in w for w in int8.warnings)
    bf16.check(AVX2_ONLY, "eager")
    int8.check(AVX2_ONLY, "eager")
    assert bf16.warnings == ["bf16 is emulated on this CPU (no AVX512-BF16/AMX-BF16): expect it slower than fp32"]
    assert any("int8 is not native on this CPU" in w for w in int8.warnings)


def test_bad_option_values_are_user_errors(tiny):
    with pytest.raises(UserError, match="precision.weights='half'"):
        tiny.precision("bf16", weights="half")
    with pytest.raises(UserError, match="precision.backend='fbgemm'"):
        tiny.precision("int8", backend="fbgemm")
    with pytest.raises(UserError, match="mode.mode='fastest'"):
        create_mode("compile", mode="fastest")
    with pytest.raises(UserError, match="unknown mode 'onnx'"):
        create_mode("onnx")
