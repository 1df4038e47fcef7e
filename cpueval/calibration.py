"""Calibration data for static quantization: which examples calibrate, never silently the scored ones.

A precision that can quantize statically has a `calibration` field (CalibrationConfig). When the job's
mode or precision needs calibration (`needs_calibration`), the pipeline picks the examples here, runs
them through the task's own pre-processing and batching, and hands the batches to the mode
(PrepareContext.calibration). Sources:
  unscored  (default) examples of the same data that are not scored: those after data.max_eval_samples;
            an error if there are not enough (the scored set stays the one every other job scores);
  held_out  the first `samples` examples, then left out of scoring (the record and the report say so:
            the row's data fingerprint differs from the other jobs', so it gets no baseline);
  path      a file of its own (same format and columns as data.path), e.g. a train-split sample;
  scored    the first `samples` scored examples, which stay scored (only when no other data exists:
            the record says the calibration overlaps the scored set).
What calibrated is recorded in results.json (data.calibration: source, count, ids, fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Optional

import datasets

from cpueval.errors import UserError


class CalibrationSource(StrEnum):
    unscored = "unscored"
    held_out = "held_out"
    path = "path"
    scored = "scored"


class CalibrationMethod(StrEnum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"
    histogram = "histogram"  # int8 backend pt2e_static only: HistogramObserver (the X86 quantizer's default)


@dataclass
class CalibrationConfig:
    samples: int = 128  # examples run through the model to collect activation ranges
    source: CalibrationSource = CalibrationSource.unscored
    path: Optional[str] = None  # source=path: a data file in the same format as data.path
    # How activation ranges become scales, where the backend offers a choice (ONNX Runtime static).
    method: CalibrationMethod = CalibrationMethod.minmax


@dataclass
class CalibrationSet:
    examples: datasets.Dataset  # the calibration examples (canonical columns, task-prepared)
    scored: datasets.Dataset  # the examples to score (unchanged unless source=held_out)
    info: dict[str, Any]  # recorded as data.calibration


def choose(config: Any, data_config: Any, scored: datasets.Dataset, load: Any, ids_of: Any,
           setting: str = "precision.calibration", skip: int = 0) -> CalibrationSet:
    """Pick the calibration examples. `config` has samples, source and path (a CalibrationConfig, or
    the int8 search's validation settings, named `setting` in errors). `load(data_config)` loads
    examples (canonical columns, all rows when max_eval_samples is None); `ids_of(dataset)` lists
    example ids for the record. source=unscored passes over the first `skip` unscored examples (those
    another choice took)."""
    if config.samples <= 0:
        raise UserError(f"{setting}.samples={config.samples} must be > 0")
    overlaps = config.source == CalibrationSource.scored
    if config.source == CalibrationSource.held_out:
        if config.samples >= len(scored):
            raise UserError(f"{setting}.samples={config.samples} leaves nothing to score of "
                            f"{len(scored)} examples (source=held_out); lower it or use source=unscored|path")
        chosen, scored = scored.select(range(config.samples)), scored.select(range(config.samples, len(scored)))
        left_out = True
    elif overlaps:
        chosen, left_out = scored.select(range(min(config.samples, len(scored)))), False
    elif config.source == CalibrationSource.path:
        if not config.path:
            raise UserError(f"{setting}.source=path needs {setting}.path=<data file>")
        loaded = load(replace(data_config, path=config.path, name=None, max_eval_samples=config.samples))
        chosen, left_out = loaded, False
    else:
        everything = load(replace(data_config, max_eval_samples=None))
        rest = len(everything) - len(scored) - skip
        if rest < config.samples:
            raise UserError(f"{setting}.samples={config.samples}: only {rest} examples of the data are "
                            f"not scored{' (nor calibrate)' if skip else ''}; set data.max_eval_samples lower, "
                            f"{setting}.source=path with {setting}.path=<file> (e.g. a train sample), or "
                            f"source=held_out")
        first = len(scored) + skip
        chosen, left_out = everything.select(range(first, first + config.samples)), False
    info = {"source": str(config.source), "examples": len(chosen), "left_out_of_scoring": left_out,
            "overlaps_scored": overlaps, "method": str(getattr(config, "method", "")), "ids": ids_of(chosen)}
    return CalibrationSet(examples=chosen, scored=scored, info=info)
