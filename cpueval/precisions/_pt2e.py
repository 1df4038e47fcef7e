"""Static int8 for the PyTorch modes: torchao's PT2E flow with the X86 Inductor quantizer.

torch.export (batch and sequence dimensions dynamic) -> prepare_pt2e (observers on the Linear layers'
inputs and weights) -> the calibration batches run through it -> convert_pt2e (quantize/dequantize
pairs around the int8 weights) -> mode=compile lowers the pairs to int8 kernels (oneDNN) with
freezing. Activations: uint8 per tensor, calibrated; weights: int8 per channel, symmetric.
Without VNNI, activations use 7 bits (reduce_range), as torchao advises: the AVX2 u8 x s8 multiply
(vpmaddubsw) saturates its 16-bit sums with full-range activations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch

from cpueval.errors import UserError

OBSERVERS = {"minmax": "MinMaxObserver", "histogram": "HistogramObserver"}


def quantization_config(method: str, reduce_range: bool) -> Any:
    """X86InductorQuantizer's default static config, its activation observer chosen by `method`."""
    import torchao.quantization.pt2e.observer as observers
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import get_default_x86_inductor_quantization_config

    if method not in OBSERVERS:
        raise UserError(f"precision.calibration.method={method} is not offered by backend=pt2e_static; "
                        f"choose {' or '.join(OBSERVERS)}")
    config = get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
    observer = getattr(observers, OBSERVERS[method]).with_args(eps=2**-12)
    activation = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=observer)
    return dataclasses.replace(config, input_activation=activation, output_activation=activation)


def export_example(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch.export specializes a dimension of size 1: give it at least 2 rows and 2 positions."""
    rows, length = next(iter(batch.values())).shape[:2]
    return {name: t.repeat(2 if rows < 2 else 1, 2 if length < 2 else 1) for name, t in batch.items()}


def quantize(model: torch.nn.Module, calibration: Sequence[Mapping[str, torch.Tensor]], fp32_layers: Sequence[str],
             method: str, reduce_range: bool) -> torch.nn.Module:
    """The PT2E-quantized (not yet compiled) graph module of `model`, `fp32_layers` left in fp32."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

    if not calibration:
        raise UserError("precision.backend=pt2e_static calibrates activations: set precision.calibration.samples > 0")
    example = export_example(calibration[0])
    dynamic = {name: {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO} for name in example}  # bounds inferred
    with torch.no_grad():
        exported = torch.export.export(model, (), example, dynamic_shapes=dynamic, strict=False)
    quantizer = X86InductorQuantizer().set_global(quantization_config(method, reduce_range))
    for name in fp32_layers:
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(exported.module(), quantizer)
    with torch.no_grad():
        for inputs in calibration:
            prepared(**inputs)
    return convert_pt2e(prepared)
