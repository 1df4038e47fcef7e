"""Helpers shared by precision modules, and building a precision by name."""

from __future__ import annotations

from typing import Any, Iterable

from cpueval import plugins
from cpueval.errors import UserError
from cpueval.precisions.base import Precision


def require_choice(field: str, value: str, choices: Iterable[str]) -> str:
    """`value` if it is one of `choices`, else a UserError naming the field and the choices."""
    choices = tuple(choices)
    if value not in choices:
        raise UserError(f"{field}={value!r} is not one of {', '.join(choices)}")
    return value


def create_precision(name: str, **fields: Any) -> Precision:
    """The precision `name` with its schema's defaults, `fields` applied (cpueval.plugins.create)."""
    return plugins.create("precision", name, **fields)  # type: ignore[return-value]
