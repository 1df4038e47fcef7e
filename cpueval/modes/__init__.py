"""Execution modes: one module per mode (eager, jit, compile, ipex, ipex_jit), each exposing SCHEMA;
see base.py for the interface and _common.py for what they share (fallback, stats)."""

from cpueval.modes._common import ModeFailed, create_mode

__all__ = ["ModeFailed", "create_mode"]
