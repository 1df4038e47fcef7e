"""fp32: the model as loaded. The reference precision."""

from __future__ import annotations

from dataclasses import dataclass

from cpueval.precisions.base import Precision, PrecisionConfig


@dataclass
class Fp32Config(PrecisionConfig):
    _target_: str = "cpueval.precisions.fp32.Fp32Precision"
    name: str = "fp32"


SCHEMA = Fp32Config


class Fp32Precision(Precision):
    order = 0  # the reference precision
