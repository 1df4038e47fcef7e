"""Combinations that cannot work are refused before the model loads, naming mode and precision."""

from __future__ import annotations

import re
import types

import pytest
import torch

from cpueval import plugins
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
    monkeypatch.setattr(plugins.Requirement, "present", lambda self: True)


def check(mode, precision, caps=SAPPHIRE) -> list[str]:
    """What the pipeline runs before the model loads: the warnings, or Refused."""
    return plugins.check_job(caps, create_task("qa"), mode, precision)


def create_task(name: str):
    return plugins.create("task", name)


@pytest.mark.parametrize("mode", ["ipex", "ipex_jit"])
def test_ipex_absent_gives_the_install_hint(mode, monkeypatch, tiny):
    monkeypatch.setattr(plugins.Requirement, "present", lambda self: False)
    with pytest.raises(Refused, match=rf"^mode={mode} needs the package intel-extension-for-pytorch, which is not "
                                      r"installed: .*bash jobs/envs/ipex/build\.sh"):
        check(create_mode(mode), tiny.precision("fp32"))


def test_ipex_absent_here_is_refused(tiny, caps):
    if _ipex.ipex_status()["installed"]:
        pytest.skip("IPEX is installed in this environment")
    with pytest.raises(Refused, match="intel-extension-for-pytorch"):
        check(create_mode("ipex"), tiny.precision("fp32"), caps)


def test_ipex_version_mismatch_names_both(monkeypatch, tiny):
    ipex_installed(monkeypatch, "2.7.0+cpu", matches=False)
    with pytest.raises(Refused, match=rf"2\.7\.0\+cpu does not match torch {re.escape(torch.__version__)}"):
        check(create_mode("ipex"), tiny.precision("fp32"))


def test_ipex_bf16_needs_avx512(monkeypatch, tiny):
    ipex_installed(monkeypatch, torch.__version__, matches=True)
    check(create_mode("ipex"), tiny.precision("bf16"))
    with pytest.raises(Refused, match="mode=ipex_jit precision=bf16: IPEX refuses bf16"):
        check(create_mode("ipex_jit"), tiny.precision("bf16"), AVX2_ONLY)
    check(create_mode("ipex_jit"), tiny.precision("fp32"), AVX2_ONLY)


@pytest.mark.parametrize(
    "backend, mode, refuser",
    [("ao_dynamic", "ipex", "mode=ipex"), ("ao_dynamic", "ipex_jit", "mode=ipex_jit"),
     ("torchao", "ipex", "mode=ipex"), ("torchao", "eager", "precision=int8"), ("torchao", "jit", "precision=int8")],
)
def test_int8_refusals_are_declared_by_the_plugins(backend, mode, refuser, monkeypatch, tiny):
    ipex_installed(monkeypatch, torch.__version__, matches=True)
    with pytest.raises(Refused, match=rf"with {re.escape(refuser)}: \S+"):
        check(create_mode(mode), tiny.precision("int8", backend=backend))


@pytest.mark.parametrize("backend, mode", [("ao_dynamic", "eager"), ("ao_dynamic", "jit"), ("ao_dynamic", "compile"), ("torchao", "compile")])
def test_int8_allows_what_works(backend, mode, tiny):
    if backend == "torchao":
        pytest.importorskip("torchao.quantization")
    check(create_mode(mode), tiny.precision("int8", backend=backend))


def test_emulation_warnings_follow_the_declared_cpu_features(tiny):
    assert not any("emulated" in w or "not native" in w
                   for w in check(create_mode("eager"), tiny.precision("bf16")) + check(create_mode("eager"), tiny.precision("int8")))
    assert check(create_mode("eager"), tiny.precision("bf16"), AVX2_ONLY) == [
        "bf16 is emulated on this CPU (no AVX512-BF16/AMX-BF16): expect it slower than fp32"]
    assert any("int8 is not native on this CPU" in w for w in check(create_mode("eager"), tiny.precision("int8"), AVX2_ONLY))


def test_bad_option_values_are_user_errors(tiny):
    with pytest.raises(UserError, match=r"precision.weights=.half.: Invalid value .half., expected one of \[autocast, cast\]"):
        tiny.precision("bf16", weights="half")
    with pytest.raises(UserError, match=r"precision.backend=.fbgemm.: Invalid value .fbgemm., expected one of \[ao_dynamic, torchao, pt2e_static\]"):
        tiny.precision("int8", backend="fbgemm")
    with pytest.raises(UserError, match="mode.mode='fastest'"):
        create_mode("compile", mode="fastest")
    with pytest.raises(UserError, match="unknown mode 'onnx'"):
        create_mode("onnx")
