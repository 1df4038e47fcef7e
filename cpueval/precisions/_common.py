"""Building a precision by name."""

from __future__ import annotations

from typing import Any

from cpueval import plugins
from cpueval.precisions.base import Precision


def create_precision(name: str, **fields: Any) -> Precision:
    """The precision `name` with its schema's defaults, `fields` applied (cpueval.plugins.create)."""
    return plugins.create("precision", name, **fields)  # type: ignore[return-value]
