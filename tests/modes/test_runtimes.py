"""mode=onnxruntime and mode=openvino: parity with eager fp32 at shapes the export never saw, int8 that is
really quantized and stays close, the content-keyed cache, failures and refusals.

Tolerances (absolute, on the tiny random models' logits: |logit| <= 0.3, std ~0.1):
  fp32: 1e-5, as tests/modes/test_fp32_parity.py: both runtimes compute the same fp32 graph with other
        kernels and fusions, i.e. a few ulps per op (observed <= 6e-8 here, ~1e-5 on minilm-squad per
        ../shared/README.md); a shape baked into the export or a lost mask moves logits by > 1e-2.
  int8, ONNX Runtime (dynamic, static QDQ): 5e-2 as for the PyTorch int8 backends (8-bit weights and
        activations, ~1/127 of each matmul's range; observed up to 5.4e-3).
  int8, NNCF: 1e-1 and not less: NNCF also quantizes the attention's activation x activation MatMuls and
        applies SmoothQuant, calibrated here on four random batches (observed 2.1e-2, 89% argmax agreement
        on QA). Still under the logits' spread, and argmax agreement is required as well.
Argmax agreement >= 75% (random logits are close together, near-ties may flip; observed 89-100%).
An int8 difference must also be > 0 and the runtime must report quantized nodes: it really quantized.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from cpueval import plugins
from cpueval.errors import Refused, UserError
from cpueval.modes import _runtime_cache as cache
from cpueval.modes._common import ModeFailed, create_mode
from cpueval.modes.base import PrepareContext
from cpueval.parity import compare_outputs

FP32_TOL = 1e-5
RUNTIMES = {"onnxruntime": ("onnxruntime", "onnx", "onnxscript"), "openvino": ("openvino",)}
# (rows, length) the loop runs; the export/conversion sees 3x16 only.
SHAPES = [(3, 16), (3, 8), (3, 24), (3, 32), (1, 40), (5, 16)]
EXPORT_FN = {"onnxruntime": ("torch.onnx", "export"), "openvino": ("openvino", "convert_model")}


def needs(mode: str) -> None:
    for module in RUNTIMES[mode]:
        pytest.importorskip(module, reason=f"mode={mode} needs {module}: pip install -e '.[onnx,openvino]'")


def shaped_batch(tiny, rows: int, length: int) -> dict[str, torch.Tensor]:
    """`rows` x `length`, padded rows included (built from the fixtures' 3-row batches)."""
    parts = [tiny.make_batch(length, seed=seed) for seed in range(0, rows // 3 + 2)]
    batch = {k: torch.cat([p[k] for p in parts])[-rows:] for k in parts[0]}
    return {k: v.contiguous() for k, v in batch.items()}


@pytest.fixture(scope="module")
def shaped(tiny) -> list[dict[str, torch.Tensor]]:
    return [shaped_batch(tiny, rows, length) for rows, length in SHAPES]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> "os.PathLike":
    """One cache for the module: each model is exported/converted once (the cache under test)."""
    return tmp_path_factory.mktemp("runtime-cache")


@pytest.fixture(scope="module")
def calibration(tiny) -> list[dict[str, torch.Tensor]]:
    return [tiny.make_batch(length, seed=11) for length in (16, 24, 8, 32)]


def prepare(tiny, mode, precision, kind, cache_dir, calibration=None):
    return mode.prepare(tiny.build(kind), precision,
                        PrepareContext(tiny.make_batch(tiny.EXAMPLE_LENGTH, pad=False, seed=1), cache_dir=cache_dir,
                                       calibration=calibration))


def parity(tiny, kind, batches, outputs):
    reference = tiny.eager_reference(kind, batches)
    lengths = [tiny.real_lengths(b) for b in batches] if kind == "qa" else None
    return compare_outputs(reference, outputs, lengths)


# -- fp32 -------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qa", "cls"])
@pytest.mark.parametrize("name", list(RUNTIMES))
def test_fp32_matches_eager_at_shapes_the_export_never_saw(name, kind, tiny, caps, shaped, shared_cache):
    needs(name)
    mode, fp32 = create_mode(name), tiny.precision("fp32")
    plugins.check_together(caps, mode, fp32)
    prepared = prepare(tiny, mode, fp32, kind, shared_cache)
    outputs = [prepared.forward(b) for b in shaped]
    result = parity(tiny, kind, shaped, outputs)
    assert result["max_abs_diff"] < FP32_TOL, result
    assert result["identical_predictions"] == 1.0, result
    expected = {"qa": {"start_logits", "end_logits"}, "cls": {"logits"}}[kind]
    assert all(set(out) == expected and all(v.dtype == torch.float32 for v in out.values()) for out in outputs)
    assert prepared.stats()["distinct_shapes"] == len(SHAPES)  # warm-up calls are not counted
    assert prepared.precision_details is None
    if name == "onnxruntime":
        assert prepared.details["providers"][0] == "CPUExecutionProvider" and prepared.details["opset"] >= 17
    else:
        assert prepared.details["inference_precision"] == "f32"
        assert set(prepared.details["executed_precisions"]["FullyConnected"]) == {"f32"}


# -- int8 ---------------------------------------------------------------------------------------------------
INT8 = [
    # mode, mode fields, precision fields, bound
    pytest.param("onnxruntime", {"int8": "dynamic"}, {}, 5e-2, id="ort-dynamic"),
    pytest.param("onnxruntime", {"int8": "dynamic"}, {"weights": "per_tensor"}, 5e-2, id="ort-dynamic-per_tensor"),
    pytest.param("onnxruntime", {"int8": "static"}, {}, 5e-2, id="ort-static-minmax"),
    pytest.param("onnxruntime", {"int8": "static"}, {"calibration": {"method": "entropy"}}, 5e-2,
                 id="ort-static-entropy"),
    pytest.param("onnxruntime", {"int8": "static"}, {"calibration": {"method": "percentile"}}, 5e-2,
                 id="ort-static-percentile"),
    pytest.param("openvino", {}, {}, 1e-1, id="nncf"),
]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["qa", "cls"])
@pytest.mark.parametrize("name, mode_fields, precision_fields, bound", INT8)
def test_int8_is_quantized_and_stays_close(name, mode_fields, precision_fields, bound, kind, tiny, shaped,
                                           shared_cache, calibration):
    needs(name)
    if name == "openvino":
        pytest.importorskip("nncf", reason="mode=openvino precision=int8 needs nncf: pip install -e '.[openvino]'")
    mode, int8 = create_mode(name, **mode_fields), tiny.precision("int8", **precision_fields)
    prepared = prepare(tiny, mode, int8, kind, shared_cache, calibration)
    result = parity(tiny, kind, shaped, [prepared.forward(b) for b in shaped])
    assert 0 < result["max_abs_diff"] < bound, result
    assert result["identical_predictions"] >= 0.75, result
    details = prepared.precision_details
    linear = 13 if kind == "qa" else 14  # 2 layers x 6 + qa_outputs | + pooler and classifier
    declined = []  # Linear layers the quantizer would not take (reported, none expected here)
    assert details["quantized_linear"] == linear - len(declined) and details["fp32_linear"] == declined
    assert details["per_channel"] == (precision_fields.get("weights", "per_channel") == "per_channel")
    if name == "onnxruntime":
        assert details["quantized_node_count"] == linear - len(declined)
        assert details["declined_by_quantizer"] == declined and details["nodes_excluded"] == []
        assert details["method"] == mode_fields["int8"]
        if mode_fields["int8"] == "static":  # precision.calibration.method, the one setting for every static int8
            assert details["calibration_method"] == precision_fields.get("calibration", {}).get("method", "minmax")
    else:
        assert details["fake_quantize_nodes"] >= linear and details["int8_layers_executed"] >= linear


@pytest.mark.slow
@pytest.mark.parametrize("name, mode_fields", [("onnxruntime", {"int8": "dynamic"}), ("onnxruntime", {"int8": "static"}),
                                               ("openvino", {})])
def test_skip_modules_keep_those_linear_layers_fp32(name, mode_fields, tiny, shared_cache, calibration):
    needs(name)
    int8 = tiny.precision("int8", skip_modules=["qa_outputs", "*.layer.1.output.dense"])
    prepared = prepare(tiny, create_mode(name, **mode_fields), int8, "qa", shared_cache, calibration)
    details = prepared.precision_details
    assert details["fp32_linear"] == ["bert.encoder.layer.1.output.dense", "qa_outputs"]
    assert details["quantized_linear"] == 11 and len(details["nodes_excluded"]) == 2
    bad = tiny.precision("int8", skip_modules=["no_such_layer"])
    with pytest.raises(ModeFailed, match=r"precision\.skip_modules: \['no_such_layer'\] match no Linear layer"):
        prepare(tiny, create_mode(name, **mode_fields), bad, "qa", shared_cache, calibration)


# -- calibration contract --------------------------------------------------------------------------------------
def test_which_precisions_need_calibration(tiny):
    int8, fp32 = tiny.precision("int8"), tiny.precision("fp32")
    assert create_mode("onnxruntime", int8="static").needs_calibration(int8)
    assert not create_mode("onnxruntime").needs_calibration(int8)
    assert not create_mode("onnxruntime", int8="static").needs_calibration(fp32)
    assert create_mode("openvino").needs_calibration(int8)
    assert not create_mode("openvino").needs_calibration(fp32)


@pytest.mark.parametrize("name, mode_fields", [("onnxruntime", {"int8": "static"}), ("openvino", {})])
def test_int8_without_calibration_is_a_one_line_user_error(name, mode_fields, tiny):
    needs(name)
    mode = create_mode(name, **mode_fields)
    with pytest.raises(UserError, match=r"needs calibration batches: set precision\.calibration") as raised:
        mode.prepare(tiny.build("qa"), tiny.precision("int8"), PrepareContext(tiny.make_batch(16)))
    assert not isinstance(raised.value, ModeFailed) and "\n" not in str(raised.value)


# -- cache -----------------------------------------------------------------------------------------------------
def _forbid(monkeypatch, name: str) -> None:
    module, attribute = EXPORT_FN[name]
    monkeypatch.setattr(f"{module}.{attribute}", _raise(f"{attribute} called on a cache hit"))


def _raise(message: str):
    def fail(*args, **kwargs):
        raise RuntimeError(message)

    return fail


@pytest.mark.slow
@pytest.mark.parametrize("name, precision_name", [("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                                  ("openvino", "int8")])
def test_a_second_build_reuses_the_cached_model(name, precision_name, tiny, tmp_path, monkeypatch, calibration):
    needs(name)
    if precision_name == "int8" and name == "openvino":
        pytest.importorskip("nncf")
    precision = tiny.precision(precision_name)
    first = prepare(tiny, create_mode(name), precision, "qa", tmp_path, calibration)
    step = "export" if name == "onnxruntime" else "convert"
    assert first.details[step]["cache"] == "miss" and first.details[step]["seconds"] > 0
    kind = "onnx" if name == "onnxruntime" else "openvino"
    entries = sorted(p.name for p in (tmp_path / kind).iterdir())
    assert len(entries) == (2 if precision_name == "int8" else 1) and not any(e.startswith(".") for e in entries)
    _forbid(monkeypatch, name)
    monkeypatch.setattr("onnxruntime.quantization.quantize_dynamic", _raise("quantized again"), raising=False)
    monkeypatch.setattr("nncf.quantize", _raise("quantized again"), raising=False)
    second = prepare(tiny, create_mode(name), precision, "qa", tmp_path, calibration)
    for step_name in first.details.keys() & {"export", "convert", "quantize"}:
        assert second.details[step_name]["cache"] == "hit", step_name
        assert second.details[step_name]["sha256"] == first.details[step_name]["sha256"]
        assert second.details[step_name]["dir"] == first.details[step_name]["dir"]
    batch = tiny.make_batch(24)
    assert all(torch.equal(a, b) for a, b in zip(first.forward(batch).values(), second.forward(batch).values()))


@pytest.mark.slow
def test_other_calibration_data_is_another_cache_entry(tiny, tmp_path, calibration):
    needs("onnxruntime")
    mode, int8 = create_mode("onnxruntime", int8="static"), tiny.precision("int8")
    first = prepare(tiny, mode, int8, "qa", tmp_path, calibration)
    second = prepare(tiny, mode, int8, "qa", tmp_path, calibration[:2])
    assert second.details["export"]["cache"] == "hit" and second.details["quantize"]["cache"] == "miss"
    assert second.details["quantize"]["dir"] != first.details["quantize"]["dir"]


def test_cache_entries_appear_whole_or_not_at_all(tmp_path):
    material = {"what": "test"}

    def broken(directory):
        (directory / "half.bin").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        cache.cached_entry(tmp_path, "kind", material, broken)
    assert list((tmp_path / "kind").iterdir()) == []  # no entry, no temporary directory left

    def loses_the_race(directory):
        (directory / "model.bin").write_bytes(b"mine")
        cache.cached_entry(tmp_path, "kind", material, lambda d: (d / "model.bin").write_bytes(b"theirs"))

    entry = cache.cached_entry(tmp_path, "kind", material, loses_the_race)
    assert entry.hit and (entry.path / "model.bin").read_bytes() == b"theirs"
    assert [p.name for p in (tmp_path / "kind").iterdir()] == [entry.path.name]


def test_a_build_killed_midway_leaves_nothing_the_next_build_keeps(tmp_path):
    """A job killed while building (OOM killer, SIGKILL) cannot clean up: the next build of the same
    entry removes the dead process's temporary directory."""
    material = {"what": "test"}
    key = cache.content_key(material)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = tmp_path / "kind" / f".{key}.{dead.pid}@{socket.gethostname()}.abcd1234"
    abandoned.mkdir(parents=True)
    other_key = tmp_path / "kind" / f".{key}x.{dead.pid}@{socket.gethostname()}.abcd1234"
    other_key.mkdir()
    entry = cache.cached_entry(tmp_path, "kind", material, lambda d: (d / "model.bin").write_bytes(b"x"))
    assert not abandoned.exists() and other_key.exists() and (entry.path / "model.bin").exists()


def test_the_cache_key_ignores_where_the_model_was_loaded_from(tiny):
    model = tiny.build("qa")
    before = cache.model_identity(model, "sha")
    model.config._name_or_path = "/elsewhere/minilm"
    assert cache.model_identity(model, "sha") == before
    model.config.num_labels = 5
    assert cache.model_identity(model, "sha") != before


# -- failures and refusals ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(RUNTIMES))
def test_a_broken_export_fails_the_job_with_the_reason(name, tiny, tmp_path, monkeypatch):
    needs(name)
    module, attribute = EXPORT_FN[name]
    monkeypatch.setattr(f"{module}.{attribute}", _raise("unsupported operator aten::frobnicate"))
    with pytest.raises(ModeFailed, match=rf"^mode={name} precision=fp32 failed while preparing: RuntimeError: "
                                         r"unsupported operator aten::frobnicate"):
        prepare(tiny, create_mode(name), tiny.precision("fp32"), "qa", tmp_path)
    kind = "onnx" if name == "onnxruntime" else "openvino"
    assert list((tmp_path / kind).iterdir()) == []  # nothing half-written is left for the next job


def test_bf16_is_refused_by_onnxruntime_before_the_model_loads(tiny, caps, monkeypatch):
    monkeypatch.setattr(plugins.Requirement, "present", lambda self: True)
    with pytest.raises(Refused, match=r"^precision=bf16 with mode=onnxruntime: ONNX Runtime's CPU provider has no "
                                      r"bf16 kernels faster than fp32; use precision=fp32 or int8$"):
        plugins.check_job(caps, plugins.create("task", "qa"), create_mode("onnxruntime"), tiny.precision("bf16"))


@pytest.mark.parametrize("name, package, extra", [("onnxruntime", "onnxruntime", "onnx"),
                                                  ("openvino", "openvino", "openvino")])
def test_a_missing_runtime_gives_the_install_command(name, package, extra, tiny, caps, monkeypatch):
    monkeypatch.setattr(plugins.Requirement, "present", lambda self: False)
    with pytest.raises(Refused, match=rf"^mode={name} needs the package {package}, which is not installed: "
                                      rf"pip install 'cpueval\[{extra}\]'$"):
        plugins.check_job(caps, plugins.create("task", "qa"), create_mode(name), tiny.precision("fp32"))


def test_the_modes_import_without_the_runtimes_installed():
    """Plug-in discovery imports every mode at start-up: the runtime packages are imported lazily."""
    code = ("import sys\n"
            "for name in ('onnxruntime', 'onnx', 'onnxscript', 'openvino', 'nncf'): sys.modules[name] = None\n"
            "from cpueval import plugins\n"
            "import cpueval.modes.onnxruntime, cpueval.modes.openvino, cpueval.modes._onnx_int8, cpueval.modes._nncf_int8\n"
            "assert {'onnxruntime', 'openvino'} <= set(plugins.names('mode'))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_openvino_int8_without_nncf_gives_the_install_command(tiny, caps, monkeypatch):
    monkeypatch.setattr(plugins.Requirement, "present", lambda self: self.module != "nncf")
    with pytest.raises(Refused, match=r"needs the package nncf, which is not installed: pip install 'cpueval\[openvino\]'"):
        plugins.check_job(caps, plugins.create("task", "qa"), create_mode("openvino"), tiny.precision("int8"))


def test_openvino_bf16_runs_only_where_its_cpu_plugin_has_bf16(tiny, caps, shaped, shared_cache):
    """On a CPU without AVX512-BF16/AMX OpenVINO compiles a bf16 hint as f32 (seen on the AVX2-only EPYC):
    refused. Where its plugin lists BF16 it runs, and the compiled model must report bf16."""
    needs("openvino")
    from cpueval.modes.openvino import cpu_capabilities

    mode, bf16 = create_mode("openvino"), tiny.precision("bf16")
    if "BF16" not in cpu_capabilities():
        with pytest.raises(Refused, match=r"^mode=openvino precision=bf16: OpenVINO's CPU plugin has no bf16 on this CPU .* "
                                          r"use precision=fp32$"):
            plugins.check_job(caps, plugins.create("task", "qa"), mode, bf16)
        return
    plugins.check_job(caps, plugins.create("task", "qa"), mode, bf16)
    prepared = prepare(tiny, mode, bf16, "qa", shared_cache)
    assert prepared.details["inference_precision"] == "bf16"
    result = parity(tiny, "qa", shaped, [prepared.forward(b) for b in shaped])
    assert 0 < result["max_abs_diff"] < 2e-2 and result["identical_predictions"] >= 0.75, result


def test_torch_int8_backends_do_not_apply_to_the_runtimes(tiny, caps, monkeypatch):
    monkeypatch.setattr(plugins.Requirement, "present", lambda self: True)
    warnings = plugins.check_job(caps, plugins.create("task", "qa"), create_mode("onnxruntime"),
                                 tiny.precision("int8", backend="torchao"))
    assert any("precision.backend=torchao is a PyTorch int8 backend: mode=onnxruntime ignores it" in w
               for w in warnings)


@pytest.mark.parametrize("name, field, value", [("onnxruntime", "graph_optimization_level", "max"),
                                                ("onnxruntime", "int8", "qat"),
                                                ("openvino", "performance_hint", "FAST")])
def test_unknown_options_are_one_line_errors(name, field, value):
    with pytest.raises(UserError, match=rf"^mode\.{field}='{value}' is not one of "):
        create_mode(name, **{field: value})
