"""int8 for mode=onnxruntime: ONNX Runtime's own quantization of the Linear layers' MatMuls.

Only MatMul/Gemm nodes with a constant weight (the exported nn.Linear layers) are quantized, as the
PyTorch int8 backends do; the attention's activation x activation MatMuls, the embeddings' Gather and
everything else stay fp32. `precision.skip_modules` (fnmatch on module names) maps to ONNX node names
through the module path the dynamo exporter records on each node (`pkg.torch.onnx.name_scopes`).

  dynamic: quantize_dynamic: int8 weights (per channel per precision.weights), activations quantized
           per call (uint8, per tensor).
  static:  quantize_static, QDQ format: int8 weights and int8 activations whose ranges are calibrated
           beforehand on ctx.calibration (minmax, entropy or percentile; conf/mode/onnxruntime.yaml has
           what each cost on minilm-squad).
"""

from __future__ import annotations

import ast
import tempfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

import torch

from cpueval.errors import UserError
from cpueval.modes import _runtime_cache as cache
from cpueval.modes.base import Inputs, PrepareContext
from cpueval.precisions.base import Precision

MODEL_FILE = "model.onnx"
# Ops that compute in integers (dynamic quantization and ORT's own fusions of QDQ patterns).
INTEGER_OPS = {"MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulIntegerToFloat", "QGemm"}


# quantize_dynamic first rewrites a Gemm node G (a 2-D Linear: BERT's pooler, a classifier) as MatMul
# "G_MatMul" + Add, and quantizes that only if named in nodes_to_quantize.
GEMM_AS_MATMUL = "{}_MatMul"


def linear_nodes(path: Path) -> dict[str, Optional[str]]:
    """MatMul/Gemm nodes with a constant weight -> the torch module they came from (None if unrecorded)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return {node.name: _module_name(node) for node in graph.node
            if node.op_type in ("MatMul", "Gemm") and any(i in constants for i in node.input)}


def _original(name: str, nodes: dict[str, Optional[str]]) -> str:
    """The module (else node) a node of the quantized graph stands for."""
    for candidate in (name, name.removesuffix(GEMM_AS_MATMUL.format(""))):
        if candidate in nodes:
            return nodes[candidate] or candidate
    return name


def _module_name(node: Any) -> Optional[str]:
    props = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(props.get("pkg.torch.onnx.name_scopes", "[]"))
    except (ValueError, SyntaxError):
        return None
    # [..., 'bert.encoder.layer.0.output.dense', 'linear_5']: the module, then the op inside it.
    return scopes[-2] if isinstance(scopes, list) and len(scopes) >= 2 else None


def plan(path: Path, precision: Precision) -> tuple[dict[str, Optional[str]], list[str], list[str]]:
    """(every Linear node -> module, nodes to quantize, nodes precision.skip_modules leaves fp32)."""
    nodes = linear_nodes(path)
    if not nodes:
        raise RuntimeError("the exported graph has no MatMul/Gemm with constant weights to quantize")
    _, patterns = cache.int8_settings(precision)
    unnamed = [n for n, module in nodes.items() if module is None]
    if patterns and unnamed:
        raise UserError(f"precision.skip_modules cannot be mapped to the exported graph: the exporter recorded no "
                        f"module for nodes {unnamed[:3]}; leave precision.skip_modules empty for mode=onnxruntime")
    skipped = cache.skipped_modules([m for m in nodes.values() if m], patterns)
    excluded = [n for n, module in nodes.items() if module in skipped]
    return nodes, [n for n in nodes if n not in excluded], excluded


def quantize_cached(path: Path, export: cache.CacheEntry, precision: Precision, config: Any,
                    ctx: PrepareContext) -> tuple[cache.CacheEntry, dict[str, Any]]:
    """The int8 model of the export at `path` (cached by export, settings and calibration data), and
    what was done, for actual.precision_details."""
    import onnxruntime

    weights, _ = cache.int8_settings(precision)
    nodes, chosen, excluded = plan(path, precision)
    static = config.int8 == "static"
    method = calibration_method(precision) if static else ""
    settings = _settings(chosen, precision, config, ctx)
    material = {"what": "onnxruntime.quantization", "export": export.path.name, **settings,
                "onnxruntime": onnxruntime.__version__}
    entry = cache.cached_entry(ctx.cache_dir, "onnx", material,
                               lambda directory: _quantize(path, directory / MODEL_FILE, settings, ctx.calibration))
    count = quantized_node_count(entry.path / MODEL_FILE)
    if count == 0:
        entry.cleanup()
        raise RuntimeError(f"ONNX Runtime's quantize_{config.int8} left no integer node in the model")
    # What really stayed fp32: the skipped ones, and any the quantizer declined.
    kept = list(linear_nodes(entry.path / MODEL_FILE))
    details = {
        "backend": f"onnxruntime.quantization.quantize_{config.int8}", "method": config.int8, "weights": weights,
        "per_channel": settings["per_channel"], "activations": _activations(config, static, method),
        "quantized_linear": len(nodes) - len(kept), "fp32_linear": [_original(n, nodes) for n in kept],
        "nodes_excluded": excluded,
        "declined_by_quantizer": [_original(n, nodes) for n in kept if n not in excluded],
        "quantized_node_count": count,
    }
    if static:
        details.update(calibration_batches=len(ctx.calibration or []), calibration_method=method)
    return entry, details


def _settings(chosen: Sequence[str], precision: Any, config: Any, ctx: PrepareContext) -> dict[str, Any]:
    """What _quantize needs (and the cache key holds): method, weight scales, the nodes, calibration."""
    weights, _ = cache.int8_settings(precision)
    settings = {"method": config.int8, "per_channel": weights == "per_channel",
                "nodes": list(chosen) + [GEMM_AS_MATMUL.format(n) for n in chosen]}
    if config.int8 == "static":
        settings.update(calibration_method=calibration_method(precision), activation_symmetric=config.activation_symmetric,
                        calibration=cache.tensors_digest(ctx.calibration or []))
    return settings


class OnnxLayers:
    """The int8 search's view of ONNX Runtime int8 (cpueval.int8_search.LayerQuantizer): one export; each
    quantize() quantizes it with the chosen layers' nodes excluded (nodes_to_quantize leaves them out) into
    a temporary directory (the search's trial models are not cached) and opens a session on it."""

    def __init__(self, export: cache.CacheEntry, precision: Precision, config: Any, ctx: PrepareContext,
                 open_model: Callable[[Path], Callable[[Inputs], Any]]):
        self.export, self.path = export, export.path / MODEL_FILE
        self.precision, self.config, self.ctx, self.open_model = precision, config, ctx, open_model

    def candidates(self) -> list[str]:
        nodes, chosen, _ = plan(self.path, self.precision)
        return list(dict.fromkeys(nodes[n] or n for n in chosen))

    def quantize(self, fp32_layers: Sequence[str]) -> Callable[[Inputs], Any]:
        config = replace(self.precision.config, skip_modules=[*self.precision.config.skip_modules, *fp32_layers])
        trial = SimpleNamespace(config=config)
        _, chosen, _ = plan(self.path, trial)  # type: ignore[arg-type]
        with tempfile.TemporaryDirectory(prefix="cpueval-int8-search-") as directory:
            target = Path(directory) / MODEL_FILE
            _quantize(self.path, target, _settings(chosen, trial, self.config, self.ctx), self.ctx.calibration)
            return self.open_model(target)  # the session holds the model: the files can go

    def reference(self) -> Callable[[Inputs], Any]:
        """The fp32 export in the same runtime: the speed each step is compared with."""
        return self.open_model(self.path)

    def identity(self) -> dict[str, Any]:
        import onnxruntime

        return {"runtime": "onnxruntime", "onnxruntime": onnxruntime.__version__, "export": self.export.sha256,
                "settings": _settings([], self.precision, self.config, self.ctx),
                "skip_modules": list(self.precision.config.skip_modules),
                "graph_optimization_level": self.config.graph_optimization_level}

    def close(self) -> None:
        self.export.cleanup()


def calibration_method(precision: Precision) -> str:
    """precision.calibration.method (minmax, entropy, percentile): one setting for every static int8."""
    calibration = getattr(precision.config, "calibration", None)
    method = str(getattr(calibration, "method", "minmax"))
    if method not in ("minmax", "entropy", "percentile"):
        raise UserError(f"precision.calibration.method={method} is not offered by ONNX Runtime: choose minmax, "
                        f"entropy or percentile")
    return method


def _activations(config: Any, static: bool, method: str) -> str:
    if not static:
        return "per_tensor, quantized per call (uint8)"
    symmetry = "symmetric" if config.activation_symmetric else "asymmetric"
    return f"per_tensor, calibrated ({method}, int8 {symmetry})"


def _quantize(source: Path, target: Path, settings: dict[str, Any], calibration: Optional[Sequence[Inputs]]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    common = dict(model_input=str(source), model_output=str(target), per_channel=settings["per_channel"],
                  weight_type=QuantType.QInt8, nodes_to_quantize=settings["nodes"],
                  op_types_to_quantize=["MatMul", "Gemm"], use_external_data_format=True)
    if settings["method"] == "dynamic":
        with cache.quiet("root"):  # ORT logs "run pre-processing first" on the root logger
            quantize_dynamic(**common)
        return
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings["calibration_method"]]
    reader = _reader(source, calibration or [], histogram=settings["calibration_method"] != "minmax")
    with cache.quiet("root"):  # ... and prints calibration progress
        quantize_static(calibration_data_reader=reader, quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                        calibrate_method=method, **common,
                        extra_options={"ActivationSymmetric": settings["activation_symmetric"], "WeightSymmetric": True})


def _reader(model: Path, batches: Sequence[Inputs], histogram: bool) -> Any:
    """A CalibrationDataReader over the calibration batches, as numpy feeds of the model's inputs."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    names = [i.name for i in onnx.load(str(model), load_external_data=False).graph.input]
    feeds = [cache.to_numpy_inputs(batch, names) for batch in (_same_shape(batches) if histogram else batches)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> Optional[dict]:
            return next(self.feeds, None)

    return Reader()


def _same_shape(batches: Sequence[Inputs]) -> list[dict[str, torch.Tensor]]:
    """Entropy and percentile stack every batch's activations into one array, so feed one row at a time,
    all padded with zeros to the longest length. The padding is masked (attention_mask 0): it only adds
    the padded positions' activations to the histograms."""
    length = max(next(iter(b.values())).shape[1] for b in batches)
    return [{name: torch.nn.functional.pad(t[row:row + 1], (0, length - t.shape[1])) for name, t in batch.items()}
            for batch in batches for row in range(next(iter(batch.values())).shape[0])]


def quantized_node_count(path: Path) -> int:
    """Integer ops, plus float MatMul/Gemm fed by DequantizeLinear (QDQ: ORT fuses them when it loads)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in graph.node if n.op_type in INTEGER_OPS
               or (n.op_type in ("MatMul", "Gemm") and any(i in dequantized for i in n.input)))
