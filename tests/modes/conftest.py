"""Tiny random BERT models (QA and sequence classification), padded batches of several lengths,
and the pipeline's call sequence, as fixtures for the mode tests.

Tests use the `tiny` fixture (this module's helpers) because importlib import mode keeps test
folders from importing each other."""

from __future__ import annotations

import sys
import warnings
from typing import Callable

import pytest
import torch

from cpueval import plugins
from cpueval.environment import Capabilities, detect_capabilities
from cpueval.modes.base import Mode, PrepareContext, PreparedModel
from cpueval.precisions import create_precision
from cpueval.precisions.base import Precision

EXAMPLE_LENGTH = 16  # prepare() sees this length; the loop also runs 8, 24, 32
LOOP_LENGTHS = (16, 8, 24, 32)
BATCH = 3
VOCAB = 100


def tiny_config(num_labels: int):
    from transformers import BertConfig

    return BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=64, num_labels=num_labels,
    )


def build(kind: str) -> torch.nn.Module:
    from transformers import BertForQuestionAnswering, BertForSequenceClassification

    torch.manual_seed(0)
    cls = {"qa": BertForQuestionAnswering, "cls": BertForSequenceClassification}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(tiny_config(num_labels=2 if kind == "qa" else 3)).eval()


def make_batch(length: int, pad: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """int64 batch like the pipeline's; with pad, rows end with padding of different amounts."""
    g = torch.Generator().manual_seed(seed + length)
    ids = torch.randint(1, VOCAB, (BATCH, length), generator=g)
    mask = torch.ones(BATCH, length, dtype=torch.long)
    if pad:
        for row in range(1, BATCH):
            mask[row, length - row * length // 4:] = 0
    ids = ids * mask
    types = torch.zeros(BATCH, length, dtype=torch.long)
    types[:, length // 2:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types * mask}


def real_lengths(batch: dict[str, torch.Tensor]) -> list[int]:
    return batch["attention_mask"].sum(1).tolist()


def precision(name: str, **fields) -> Precision:
    return create_precision(name, **fields)


def run_mode(
    mode: Mode, prec: Precision, kind: str, example: dict, batches: list[dict], caps: Capabilities
) -> tuple[PreparedModel, list[dict[str, torch.Tensor]]]:
    """What the pipeline does: check, load fp32, convert (unless the mode implements the precision), prepare, loop."""
    plugins.check_together(caps, mode, prec)
    model = build(kind) if mode.implements(prec) else prec.convert(build(kind))
    prepared = mode.prepare(model, prec, PrepareContext(example))
    return prepared, [prepared.forward(b) for b in batches]


def eager_reference(kind: str, batches: list[dict]) -> list[dict[str, torch.Tensor]]:
    model = build(kind)
    with torch.inference_mode():
        return [{k: v for k, v in model(**b).items() if isinstance(v, torch.Tensor)} for b in batches]



@pytest.fixture(scope="session")
def caps() -> Capabilities:
    return detect_capabilities()


@pytest.fixture(scope="session")
def loop_batches() -> list[dict[str, torch.Tensor]]:
    return [make_batch(length) for length in LOOP_LENGTHS]


@pytest.fixture(scope="session")
def example_batch() -> dict[str, torch.Tensor]:
    # No padding: the trace must not bake in "mask is all ones" (the loop has padded rows).
    return make_batch(EXAMPLE_LENGTH, pad=False, seed=1)


@pytest.fixture(scope="session")
def reference(loop_batches) -> Callable[[str], list[dict[str, torch.Tensor]]]:
    cache: dict[str, list[dict[str, torch.Tensor]]] = {}

    def get(kind: str) -> list[dict[str, torch.Tensor]]:
        if kind not in cache:
            cache[kind] = eager_reference(kind, loop_batches)
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def tiny():
    """This module: build, make_batch, precision, run_mode, real_lengths, LOOP_LENGTHS."""
    return sys.modules[__name__]
