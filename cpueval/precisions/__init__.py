"""Precisions: one module per precision (fp32, bf16, int8), each exposing SCHEMA; see base.py."""

from cpueval.precisions._common import create_precision

__all__ = ["create_precision"]
