"""Output parity: how far a mode x precision's outputs are from the reference (eager fp32).

Predictions are always the argmax over an output's last axis, which is the right thing for
every head this project runs:
  - QA `start_logits`/`end_logits` [B, L]: the predicted start/end position per example;
  - classification `logits` [B, C]: the predicted class per example;
  - token classification `logits` [B, L, C]: the predicted label per token.
Lengths are given for tasks whose outputs have a token axis (axis 1: QA span logits, NER logits;
`Task.per_token`): every output is then compared on real tokens only, so padding positions never
influence the numbers. Without lengths (sequence classification) every value counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]
Batch = Mapping[str, ArrayLike]


def _as_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()  # bf16 has no numpy dtype
    return np.asarray(x, dtype=np.float64)


def _flatten_lengths(lengths: Optional[Sequence[Any]]) -> Optional[np.ndarray]:
    """Per-example lengths, given flat over all batches or as one list per batch."""
    if lengths is None:
        return None
    flat: list[int] = []
    for item in lengths:
        flat.extend(int(v) for v in item) if isinstance(item, (list, tuple, np.ndarray)) else flat.append(int(item))
    return np.asarray(flat, dtype=np.int64)


def _token_mask(shape: tuple[int, ...], lengths: np.ndarray, has_token_axis: bool) -> np.ndarray:
    """Boolean mask over an output of `shape` [B, L(, C)], True on real tokens."""
    if not has_token_axis:
        return np.ones(shape, dtype=bool)
    positions = np.arange(shape[1])
    mask = positions[None, :] < lengths[:, None]  # [B, L]
    return np.broadcast_to(mask.reshape(mask.shape + (1,) * (len(shape) - 2)), shape)


@dataclass
class _KeyResult:
    max_abs_diff: float
    same: np.ndarray  # one bool per prediction (example, or token for token classification)


def _compare_key(
    ref: np.ndarray, cand: np.ndarray, lengths: Optional[np.ndarray], has_token_axis: bool
) -> _KeyResult:
    if ref.shape != cand.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
    if lengths is None:
        mask = np.ones(ref.shape, dtype=bool)
    else:
        mask = _token_mask(ref.shape, lengths, has_token_axis)
    diff = np.abs(ref - cand)[mask]
    max_abs = float(diff.max()) if diff.size else 0.0
    if ref.ndim == 2 and has_token_axis:
        # QA: argmax over real positions only, so padding cannot win either side.
        ref, cand = np.where(mask, ref, -np.inf), np.where(mask, cand, -np.inf)
        return _KeyResult(max_abs, ref.argmax(-1) == cand.argmax(-1))
    same = ref.argmax(-1) == cand.argmax(-1)  # [B] for classification, [B, L] for tokens
    if ref.ndim == 3 and lengths is not None:
        same = same[mask[..., 0]]
    return _KeyResult(max_abs, same.reshape(-1))


def compare_outputs(
    reference: Sequence[Batch],
    candidate: Sequence[Batch],
    lengths: Optional[Sequence[Any]] = None,
) -> dict[str, Any]:
    """Compare per-batch outputs of a candidate run with the reference run's.

    Args:
        reference, candidate: one mapping per batch, output name -> [B, ...] array or tensor
            (same batches, same order, same keys).
        lengths: real (non-padding) length of every example, flat over all batches in order, or
            one list per batch, for outputs with a token axis (axis 1). None: compare every position.

    Returns:
        {"outputs": {name: {"max_abs_diff": float, "identical_predictions": float, "predictions": int}},
         "max_abs_diff": float (max over outputs),
         "identical_predictions": float (share of predictions identical in every output, e.g. a QA
             example counts only if both start and end agree),
         "predictions": int, "batches": int}
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference batches vs {len(candidate)} candidate batches")
    all_lengths = _flatten_lengths(lengths)
    per_key: dict[str, list[_KeyResult]] = {}
    offset = 0
    for i, (ref_batch, cand_batch) in enumerate(zip(reference, candidate)):
        if set(ref_batch) != set(cand_batch):
            raise ValueError(f"batch {i}: outputs {sorted(ref_batch)} vs {sorted(cand_batch)}")
        size = len(next(iter(ref_batch.values()))) if ref_batch else 0
        batch_lengths = None if all_lengths is None else all_lengths[offset: offset + size]
        if batch_lengths is not None and len(batch_lengths) != size:
            raise ValueError(f"lengths cover {len(all_lengths)} examples, fewer than the batches hold")
        offset += size
        for key in ref_batch:
            ref, cand = _as_numpy(ref_batch[key]), _as_numpy(cand_batch[key])
            has_token_axis = batch_lengths is not None and ref.ndim >= 2
            per_key.setdefault(key, []).append(_compare_key(ref, cand, batch_lengths, has_token_axis))
    if all_lengths is not None and offset != len(all_lengths):
        raise ValueError(f"lengths cover {len(all_lengths)} examples but the batches hold {offset}")
    return _summarize(per_key, len(reference))


def _summarize(per_key: Mapping[str, list[_KeyResult]], batches: int) -> dict[str, Any]:
    outputs: dict[str, dict[str, Any]] = {}
    same_by_key: dict[str, np.ndarray] = {}
    for key, results in per_key.items():
        same = np.concatenate([r.same for r in results]) if results else np.zeros(0, dtype=bool)
        same_by_key[key] = same
        outputs[key] = {
            "max_abs_diff": max(r.max_abs_diff for r in results),
            "identical_predictions": float(same.mean()) if same.size else 1.0,
            "predictions": int(same.size),
        }
    sizes = {s.size for s in same_by_key.values()}
    if len(sizes) == 1:  # same prediction units in every output (QA start/end): all must agree
        overall = np.logical_and.reduce(list(same_by_key.values()))
        identical, count = (float(overall.mean()) if overall.size else 1.0), int(overall.size)
    else:  # unrelated outputs: the worst share
        identical = min((o["identical_predictions"] for o in outputs.values()), default=1.0)
        count = min((o["predictions"] for o in outputs.values()), default=0)
    return {
        "outputs": outputs,
        "max_abs_diff": max((o["max_abs_diff"] for o in outputs.values()), default=0.0),
        "identical_predictions": identical,
        "predictions": count,
        "batches": batches,
    }
