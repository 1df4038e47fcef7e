"""Helpers shared by precision modules."""

from __future__ import annotations

from typing import Iterable

from cpueval.errors import Refused, UserError


def require_choice(field: str, value: str, choices: Iterable[str]) -> str:
    """`value` if it is one of `choices`, else a UserError naming the field and the choices."""
    choices = tuple(choices)
    if value not in choices:
        raise UserError(f"{field}={value!r} is not one of {', '.join(choices)}")
    return value


def refuse(precision: str, mode: str, why: str) -> Refused:
    return Refused(f"mode={mode} precision={precision}: {why}")
