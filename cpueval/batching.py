"""Batches that compute as little padding as possible.

Windows are sorted by length so each batch holds windows of similar length, every batch is padded
only to its own longest window (rounded up to a multiple, so compiled and traced modes see few
distinct shapes), and the pipeline puts outputs back in feature order before post-processing.
`pad_to_max_length` keeps the classic behaviour: dataset order, every window at max_seq_length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch


@dataclass
class Batch:
    indices: np.ndarray  # feature indices, in the order of the batch rows
    lengths: np.ndarray  # real (non-padding) tokens of each row
    inputs: dict[str, torch.Tensor]  # padded model inputs, [rows, padded_length]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.inputs["input_ids"].shape)  # type: ignore[return-value]


def plan_batches(lengths: Sequence[int], batch_size: int, length_bucketing: bool) -> list[np.ndarray]:
    """Feature indices per batch. With bucketing, longest windows first (a batch that does not fit
    in memory fails at once, not at the end); otherwise dataset order."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable") if length_bucketing else np.arange(len(lengths))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def padded_length(longest: int, multiple: int, cap: int) -> int:
    """`longest` rounded up to a multiple of `multiple`, but never above `cap` (max_seq_length)."""
    if multiple <= 1:
        return longest
    return min(-(-longest // multiple) * multiple, max(cap, longest))


def collate(features: Mapping[str, Sequence[Sequence[int]]], indices: np.ndarray, columns: Sequence[str],
            pad_values: Mapping[str, int], multiple: int, cap: int) -> Batch:
    """Right-pad the given features' columns into int64 tensors of one batch."""
    rows = [features["input_ids"][i] for i in indices]
    width = padded_length(max(len(r) for r in rows), multiple, cap)
    inputs = {}
    for column in columns:
        array = np.full((len(indices), width), pad_values.get(column, 0), dtype=np.int64)
        for row, index in enumerate(indices):
            values = features[column][index]
            array[row, : len(values)] = values
        inputs[column] = torch.from_numpy(array)
    # real tokens per row: features padded by the tokenizer (pad_to_max_length) carry their padding
    # in the attention mask, not in their length
    mask = inputs.get("attention_mask")
    lengths = mask.sum(dim=1).numpy() if mask is not None else np.array([len(r) for r in rows])
    return Batch(indices=np.asarray(indices), lengths=lengths, inputs=inputs)


def padding_share(batches: Sequence[Batch]) -> float:
    """Share of computed token positions that are padding."""
    computed = sum(b.shape[0] * b.shape[1] for b in batches)
    real = sum(int(b.lengths.sum()) for b in batches)
    return 1.0 - real / computed if computed else 0.0
