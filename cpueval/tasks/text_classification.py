"""Sequence classification of single sentences (SST-2) and sentence pairs (MRPC, QNLI), with
run_glue.py's --do_eval semantics.

Canonical columns: `text`, optional `text_pair`, `label` (map yours with data.columns). Gold labels
are turned into the model's label ids by base.LabelSpace (label_map, then names, then ids).
Pre-processing: one feature per example, truncated to max_seq_length (longest-first for pairs); the
number of truncated examples is recorded in results.json (task_stats). Post-processing: argmax of
the logits, with its softmax probability as the score.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import datasets
import numpy as np

from cpueval.errors import UserError
from cpueval.metrics.classification import classification_metrics
from cpueval.records import write_lines_atomic, write_text_atomic
from cpueval.tasks.base import FeatureOutputs, LabelSpace, Predictions, Task, TaskConfig, with_string_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

PREDICTION_FORMATS = ("jsonl", "csv")
PREDICTION_FIELDS = ("id", "prediction", "score", "label")


@dataclass
class TextClassificationConfig(TaskConfig):
    _target_: str = "cpueval.tasks.text_classification.TextClassification"
    name: str = "text_classification"
    max_seq_length: int = 128
    # data label (as written in the data, e.g. "0") -> model label name (e.g. "negative")
    label_map: dict[str, str] = field(default_factory=dict)
    # labels of the builtin random model (model=tiny_random); real models bring their own
    builtin_labels: list[str] = field(default_factory=lambda: ["negative", "positive"])
    predictions_format: str = "jsonl"  # jsonl | csv


SCHEMA = TextClassificationConfig


class TextClassification(Task):
    auto_model = "AutoModelForSequenceClassification"
    required_columns = ("text",)
    optional_columns = ("id", "text_pair", "label")
    output_names = ("logits",)
    architecture_suffix = "ForSequenceClassification"
    per_token = False
    version = 1
    config: TextClassificationConfig
    labels: LabelSpace

    def validate_config(self) -> None:
        super().validate_config()
        if self.config.predictions_format not in PREDICTION_FORMATS:
            raise UserError(f"task.predictions_format={self.config.predictions_format} must be one of "
                            f"{', '.join(PREDICTION_FORMATS)}")

    def builtin_labels(self) -> list[str] | None:
        return list(self.config.builtin_labels)

    def validate_model(self, model: PreTrainedModel, source: str) -> None:
        super().validate_model(model, source)
        problem = getattr(model.config, "problem_type", None)
        if model.config.num_labels < 2 or problem in ("regression", "multi_label_classification"):
            raise UserError(f"model.name_or_path={source} is a {problem or 'regression'} head "
                            f"({model.config.num_labels} outputs); task=text_classification needs single-label "
                            f"classification with >= 2 labels")
        self.set_labels(model.config.id2label)

    def set_labels(self, id2label: dict[Any, str]) -> None:
        """The model's label names; validate_model calls it (tests may call it directly)."""
        self.labels = LabelSpace(id2label, self.config.label_map)

    # -- examples ----------------------------------------------------------------------------
    def prepare_examples(self, examples: datasets.Dataset, source: str) -> datasets.Dataset:
        if "label" not in examples.column_names:
            raise UserError(f"{source} has no 'label' column (has {examples.column_names}): without gold labels "
                            f"nothing can be scored; name yours with data.columns.label=<column>")
        for column in ("text", "text_pair"):
            if column in examples.column_names:
                _check_texts(examples[column], column, source)
        examples = with_string_ids(examples)
        ids = self._label_ids(examples["label"], examples.features["label"], source)
        return examples.remove_columns("label").add_column("label", ids)

    def _label_ids(self, values: list[Any], feature: Any, source: str) -> list[int]:
        labels = self._labels_for(feature)
        ids = []
        for row, value in enumerate(values, start=1):
            if value is None or (isinstance(value, str) and not value.strip()):
                raise UserError(f"{source} row {row}: the label cell is empty; every row needs a gold label "
                                f"(fill it or drop the row)")
            label_id = labels.resolve(value)
            if label_id is None:
                hint = " (GLUE test splits carry no labels; evaluate the validation split)" if value == -1 else ""
                raise UserError(f"{source} row {row}: label {value!r} is not a label of the model ({labels.known()})"
                                f"{hint}; map it to a model label with ++task.label_map.{value}="
                                f"{labels.id2label[min(labels.id2label)]}")
            ids.append(label_id)
        return ids

    def _labels_for(self, feature: Any) -> LabelSpace:
        """Hub ClassLabel names are used when the model knows them all (SST-2's negative/positive);
        otherwise (MRPC's not_equivalent/equivalent vs LABEL_0/LABEL_1) the ints are ids."""
        if not isinstance(feature, datasets.ClassLabel):
            return self.labels
        named = LabelSpace(self.labels.id2label, self.labels.label_map, feature.names)
        return named if all(named.resolve(i) is not None for i in range(len(feature.names))) else self.labels

    # -- pre-processing ------------------------------------------------------------------------
    def tokenize(self, examples: datasets.Dataset, tokenizer: PreTrainedTokenizerBase) -> datasets.Dataset:
        max_length = min(self.config.max_seq_length, tokenizer.model_max_length)
        has_pair = "text_pair" in examples.column_names

        def encode(batch: dict[str, list]) -> dict[str, list]:
            texts = (batch["text"], batch["text_pair"]) if has_pair else (batch["text"],)
            encoded = tokenizer(*texts, truncation=True, max_length=max_length, return_token_type_ids=True,
                                padding="max_length" if self.config.pad_to_max_length else False)
            encoded["example_id"] = batch["id"]
            encoded["truncated"] = _truncated(tokenizer, texts, encoded["attention_mask"], max_length)
            return dict(encoded)

        return examples.map(encode, batched=True, remove_columns=examples.column_names,
                            desc="Tokenizing sentence pairs" if has_pair else "Tokenizing sentences")

    def task_stats(self, examples: datasets.Dataset, features: datasets.Dataset) -> dict[str, Any]:
        return {"truncated_examples": int(sum(features["truncated"])), "max_seq_length": self.config.max_seq_length}

    # -- post-processing, metrics, files -------------------------------------------------------
    def postprocess(self, examples: datasets.Dataset, features: datasets.Dataset,
                    outputs: Sequence[FeatureOutputs]) -> Predictions:
        logits = np.stack([np.asarray(o["logits"], dtype=np.float64) for o in outputs])
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        best = probs.argmax(axis=1)
        ids = features["example_id"]
        return Predictions(
            by_example={i: self.labels.id2label[int(b)] for i, b in zip(ids, best)},
            extra={"label_ids": {i: int(b) for i, b in zip(ids, best)},
                   "scores": {i: float(p[b]) for i, p, b in zip(ids, probs, best)}},
        )

    def compute_metrics(self, examples: datasets.Dataset, predictions: Predictions) -> dict[str, float]:
        predicted = [predictions.extra["label_ids"][i] for i in examples["id"]]
        return classification_metrics(examples["label"], predicted, num_labels=len(self.labels.id2label))

    def headline_metrics(self) -> tuple[str, ...]:
        return ("accuracy",)

    def write_predictions(self, examples: datasets.Dataset, predictions: Predictions, out_dir: Path) -> list[Path]:
        rows = [{"id": i, "prediction": predictions.by_example[i], "score": predictions.extra["scores"][i],
                 "label": self.labels.id2label[gold]} for i, gold in zip(examples["id"], examples["label"])]
        if self.config.predictions_format == "csv":
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=PREDICTION_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            return [write_text_atomic(out_dir / "predictions.csv", buffer.getvalue())]
        return [write_lines_atomic(out_dir / "predictions.jsonl", (json.dumps(r, ensure_ascii=False) for r in rows))]


def _check_texts(texts: list[Any], column: str, source: str) -> None:
    for row, text in enumerate(texts, start=1):
        if not isinstance(text, str):
            raise UserError(f"{source} row {row}: column '{column}' holds {text!r}, not text; fix or drop the row")


def _truncated(tokenizer: PreTrainedTokenizerBase, texts: tuple[list[str], ...], attention_masks: list[list[int]],
               max_length: int) -> list[bool]:
    """Which examples lost tokens to truncation. Only those that filled max_length can have, so only
    those are tokenized again without truncation."""
    full = [i for i, mask in enumerate(attention_masks) if sum(mask) >= max_length]
    flags = [False] * len(attention_masks)
    if full:
        again = tokenizer(*([column[i] for i in full] for column in texts), truncation=False)["input_ids"]
        for i, ids in zip(full, again):
            flags[i] = len(ids) > max_length
    return flags
