"""Helpers shared by precision modules, and building a precision by name."""

from __future__ import annotations

import importlib
from typing import Any, Iterable

from hydra.utils import get_class

from cpueval.errors import Refused, UserError
from cpueval.precisions.base import Precision


def require_choice(field: str, value: str, choices: Iterable[str]) -> str:
    """`value` if it is one of `choices`, else a UserError naming the field and the choices."""
    choices = tuple(choices)
    if value not in choices:
        raise UserError(f"{field}={value!r} is not one of {', '.join(choices)}")
    return value


def refuse(precision: str, mode: str, why: str) -> Refused:
    return Refused(f"mode={mode} precision={precision}: {why}")


def create_precision(name: str, **fields: Any) -> Precision:
    """Instantiate the precision `name` (module cpueval.precisions.<name>) from its schema."""
    try:
        schema = importlib.import_module(f"cpueval.precisions.{name}").SCHEMA
    except (ImportError, AttributeError) as e:
        raise UserError(f"unknown precision {name!r} (no module cpueval.precisions.{name} with a SCHEMA)") from e
    config = schema(**fields)
    return get_class(config._target_)(config)
