"""Embedded sample data (SQuAD v1.1 / v2.0 JSON) and the offline builtin models."""

from pathlib import Path

from cpueval.assets.builtin import (
    BUILTIN_PREFIX,
    ensure_builtin_model,
    is_builtin,
    known_models,
    sample_texts,
)

ASSETS_DIR = Path(__file__).resolve().parent
SAMPLE_SQUAD = ASSETS_DIR / "sample_squad.json"
SAMPLE_SQUAD_V2 = ASSETS_DIR / "sample_squad_v2.json"

__all__ = [
    "ASSETS_DIR",
    "BUILTIN_PREFIX",
    "SAMPLE_SQUAD",
    "SAMPLE_SQUAD_V2",
    "ensure_builtin_model",
    "is_builtin",
    "known_models",
    "sample_texts",
]
