"""The task interface (pre-processing, post-processing, metrics). Filled in with the QA task."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass
class TaskConfig:
    _target_: str = MISSING
    name: str = MISSING
    max_seq_length: int = 384
    # Pad every window to max_seq_length (the classic behaviour) instead of per batch.
    pad_to_max_length: bool = False
