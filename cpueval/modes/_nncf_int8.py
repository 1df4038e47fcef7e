"""int8 for mode=openvino: NNCF post-training quantization of the converted model.

`nncf.quantize(model, nncf.Dataset(calibration), model_type=TRANSFORMER, subset_size=len(calibration))`:
int8 weights (per channel unless precision.weights=per_tensor) and int8/uint8 activations whose ranges
NNCF calibrates on ctx.calibration (with its transformer scheme: SmoothQuant, and the attention's
MatMuls quantized too). `precision.skip_modules` (fnmatch on module names) becomes an IgnoredScope of
the Linear layers' MatMul nodes, whose names convert_model derives from the module path
(`__module.bert.encoder.layer.0.output.dense/aten::linear/MatMul`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from cpueval.modes import _runtime_cache as cache
from cpueval.modes.base import PrepareContext
from cpueval.precisions.base import Precision

MODEL_FILE = "model.xml"
LINEAR_MARK = "/aten::linear/"


def linear_ops(ov_model: Any) -> dict[str, str]:
    """MatMul node (friendly name) -> the torch Linear module it came from."""
    found = {}
    for op in ov_model.get_ordered_ops():
        name = op.get_friendly_name()
        if op.get_type_name() == "MatMul" and LINEAR_MARK in name:
            found[name] = name.split(LINEAR_MARK)[0].removeprefix("__module.")
    return found


def quantize_cached(ov_model: Any, converted: cache.CacheEntry, precision: Precision,
                    ctx: PrepareContext) -> tuple[cache.CacheEntry, dict[str, Any]]:
    """The NNCF-quantized IR (cached by conversion, settings and calibration data), and what was done."""
    import nncf

    weights, patterns = cache.int8_settings(precision)
    linear = linear_ops(ov_model)
    skipped = cache.skipped_modules(linear.values(), patterns)
    ignored = sorted(name for name, module in linear.items() if module in skipped)
    calibration = list(ctx.calibration or [])
    material = {"what": "nncf.quantize", "convert": converted.path.name, "weights": weights, "ignored": ignored,
                "model_type": "TRANSFORMER", "calibration": cache.tensors_digest(calibration),
                "nncf": nncf.__version__}
    entry = cache.cached_entry(ctx.cache_dir, "openvino", material,
                               lambda directory: _quantize(ov_model, directory / MODEL_FILE, weights, ignored, ctx))
    details = {"backend": "nncf.quantize", "nncf": nncf.__version__, "model_type": "TRANSFORMER", "weights": weights,
               "per_channel": weights == "per_channel", "activations": "per_tensor, calibrated (NNCF, TRANSFORMER)",
               "calibration_batches": len(calibration), "quantized_linear": len(linear) - len(ignored),
               "fp32_linear": skipped, "nodes_excluded": ignored,
               "fake_quantize_nodes": _count(entry.path / MODEL_FILE, "FakeQuantize")}
    return entry, details


def _quantize(ov_model: Any, path: Path, weights: str, ignored: list[str], ctx: PrepareContext) -> None:
    import openvino

    openvino.save_model(_quantized(ov_model, weights, ignored, ctx), str(path), compress_to_fp16=False)


def _quantized(ov_model: Any, weights: str, ignored: list[str], ctx: PrepareContext) -> Any:
    import nncf

    input_names = [i.get_any_name() for i in ov_model.inputs]
    dataset = nncf.Dataset([cache.to_numpy_inputs(batch, input_names) for batch in ctx.calibration or []])
    with cache.quiet("nncf"):  # progress bars and notes on stdout
        return nncf.quantize(ov_model, dataset, model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(ctx.calibration or []),
                             ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
                             advanced_parameters=_per_tensor() if weights == "per_tensor" else None)


class NncfLayers:
    """The int8 search's view of NNCF int8 (cpueval.int8_search.LayerQuantizer): each quantize() runs
    nncf.quantize on the converted model with the kept layers' MatMuls in the IgnoredScope and compiles
    the result in memory (the search's trial models are not cached). Each costs a full NNCF calibration,
    so ranking is slow: about one NNCF quantization per Linear layer."""

    def __init__(self, converted: cache.CacheEntry, ov_model: Any, precision: Precision, ctx: PrepareContext,
                 open_model: Callable[[Any], Callable[[Any], Any]]):
        self.converted, self.ov_model, self.precision, self.ctx = converted, ov_model, precision, ctx
        self.open_model = open_model
        self.linear = linear_ops(ov_model)

    def candidates(self) -> list[str]:
        _, patterns = cache.int8_settings(self.precision)
        skipped = set(cache.skipped_modules(self.linear.values(), patterns))
        return [m for m in dict.fromkeys(self.linear.values()) if m not in skipped]

    def quantize(self, fp32_layers: Sequence[str]) -> Callable[[Any], Any]:
        weights, patterns = cache.int8_settings(self.precision)
        skipped = set(cache.skipped_modules(self.linear.values(), patterns)) | set(fp32_layers)
        ignored = sorted(name for name, module in self.linear.items() if module in skipped)
        return self.open_model(_quantized(self.ov_model.clone(), weights, ignored, self.ctx))

    def reference(self) -> Callable[[Any], Any]:
        """The converted fp32 model in OpenVINO: the speed each step is compared with."""
        return self.open_model(self.ov_model)

    def identity(self) -> dict[str, Any]:
        import nncf

        weights, patterns = cache.int8_settings(self.precision)
        return {"runtime": "openvino", "nncf": nncf.__version__, "convert": self.converted.sha256, "weights": weights,
                "skip_modules": patterns, "model_type": "TRANSFORMER"}

    def close(self) -> None:
        self.converted.cleanup()


def _per_tensor() -> Optional[Any]:
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    return AdvancedQuantizationParameters(weights_quantization_params=QuantizationParameters(per_channel=False))


def _count(path: Path, op_type: str) -> int:
    import openvino

    return sum(op.get_type_name() == op_type for op in openvino.Core().read_model(path).get_ordered_ops())
