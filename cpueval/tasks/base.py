"""The task interface: what a task adds to the common pipeline.

A task knows its columns, how to turn examples into model inputs (features), how to turn the
model's per-feature outputs back into per-example predictions, and how to score them. Everything
else (loading, batching, modes, precisions, timing, records) is the pipeline's, shared by all tasks.
Adding a task means one module plus one yaml in a config dir's task/ folder (cpueval/plugins.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import datasets
import numpy as np
from omegaconf import MISSING

from cpueval.errors import UserError
from cpueval.plugins import Plugin

if TYPE_CHECKING:  # transformers is imported when a task runs, not when configs are composed (fast --help)
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Per-feature model outputs, unpadded: output name -> array whose first axis is the feature's tokens
# (QA start/end logits, token-classification logits) or a vector (sequence-classification logits).
FeatureOutputs = Mapping[str, np.ndarray]


@dataclass
class TaskConfig:
    _target_: str = MISSING
    name: str = MISSING
    max_seq_length: int = 384
    # Pad every window to max_seq_length (the classic behaviour) instead of per batch.
    pad_to_max_length: bool = False


@dataclass
class Predictions:
    """What post-processing produced: per-example predictions plus anything the files need."""

    by_example: dict[str, Any]  # example id -> prediction (answer text, label, tag sequence)
    extra: dict[str, Any]  # task-specific (n-best lists, null-score diffs, scores)


class Task(Plugin):
    """Base class for tasks. Subclasses set the class attributes and implement the hooks."""

    group = "task"
    # name of the transformers Auto class for this task's head, e.g. "AutoModelForQuestionAnswering"
    # (the builtin random model is built with it too); a name, so composing configs imports no transformers
    auto_model: ClassVar[str]
    # canonical columns the loaded data must have (after data.columns renaming)
    required_columns: ClassVar[tuple[str, ...]]
    # canonical columns read when present (each can be mapped with data.columns.<name>=<your column>)
    optional_columns: ClassVar[tuple[str, ...]] = ("id",)
    # model inputs the features carry (those present are batched and fed to the model)
    input_columns: ClassVar[tuple[str, ...]] = ("input_ids", "attention_mask", "token_type_ids")
    # output names the forward pass must return, e.g. ("start_logits", "end_logits")
    output_names: ClassVar[tuple[str, ...]]
    # outputs have a token axis (axis 1: QA span logits, NER logits) rather than one vector per sequence
    per_token: ClassVar[bool] = True
    # bump when pre-processing changes, so cached features are not reused across versions
    version: ClassVar[int] = 1
    # a checkpoint saved for another head (config.architectures) is refused rather than given a random head
    architecture_suffix: ClassVar[str]

    @property
    def auto_model_class(self) -> type:
        import transformers

        return getattr(transformers, self.auto_model)

    def validate_config(self) -> None:
        """Raise UserError for settings that cannot work, before anything is loaded."""
        if self.config.max_seq_length <= 0:
            raise UserError(f"task.max_seq_length={self.config.max_seq_length} must be > 0")

    def builtin_labels(self) -> list[str] | None:
        """Labels for a builtin (random) model of this task; None for tasks without labels."""
        return None

    def validate_model(self, model: PreTrainedModel, source: str) -> None:
        """Raise UserError if the checkpoint was trained for another head: transformers would load
        it anyway with a randomly initialised head, and the metrics would silently mean nothing."""
        architectures = getattr(model.config, "architectures", None) or []
        if architectures and not any(a.endswith(self.architecture_suffix) for a in architectures):
            raise UserError(f"model.name_or_path={source} is a {'/'.join(architectures)} checkpoint, not a "
                            f"*{self.architecture_suffix} model for task={self.name}")

    def prepare_examples(self, examples: datasets.Dataset, source: str) -> datasets.Dataset:
        """Validate and normalise loaded examples (types, ids). `source` names the data in errors."""
        return examples

    def tokenize(self, examples: datasets.Dataset, tokenizer: PreTrainedTokenizerBase) -> datasets.Dataset:
        """Examples -> features holding input_columns plus whatever post-processing needs."""
        raise NotImplementedError

    def tokenization_key(self) -> dict[str, Any]:
        """The settings that change tokenize()'s output (part of the feature-cache key)."""
        return {"task": self.name, "version": self.version, "max_seq_length": self.config.max_seq_length,
                "pad_to_max_length": self.config.pad_to_max_length}

    def postprocess(self, examples: datasets.Dataset, features: datasets.Dataset,
                    outputs: Sequence[FeatureOutputs]) -> Predictions:
        raise NotImplementedError

    def compute_metrics(self, examples: datasets.Dataset, predictions: Predictions) -> dict[str, float]:
        raise NotImplementedError

    def headline_metrics(self) -> tuple[str, ...]:
        """The metrics shown first in summaries and used for accuracy gates."""
        raise NotImplementedError

    def hf_eval_results(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """The metric part of eval_results.json, with the keys Hugging Face scripts wrote."""
        return {f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}

    def write_predictions(self, examples: datasets.Dataset, predictions: Predictions, out_dir: Path) -> list[Path]:
        """Write the task's prediction files atomically; return their paths."""
        raise NotImplementedError

    def task_stats(self, examples: datasets.Dataset, features: datasets.Dataset) -> dict[str, Any]:
        """Counts about pre-processing worth recording in results.json (truncated examples, split
        sentences). Computed from the features, so a feature-cache hit reports the same numbers."""
        return {}


class LabelSpace:
    """A model's labels, and the rule that turns a data set's label values into the model's label ids.

    Per value, in order: `names` turns an int into its name (ClassLabel names, task.label_list);
    `label_map` renames a value (its string form) to a model label; a name matches a model label
    case-insensitively; an int (or a string of digits) within range is taken as a label id.
    Shared by the tasks whose gold data are labels (text and token classification).
    """

    def __init__(self, id2label: Mapping[Any, str], label_map: Mapping[Any, Any] | None = None,
                 names: Sequence[str] | None = None):
        self.id2label = {int(i): str(name) for i, name in id2label.items()}
        self._by_name = {name.lower(): i for i, name in self.id2label.items()}
        self.label_map = {str(k): str(v) for k, v in (label_map or {}).items()}
        self.names = list(names) if names is not None else None
        bad = {k: v for k, v in self.label_map.items() if self._lookup(v) is None}
        if bad:
            raise UserError(f"task.label_map maps {bad} to labels the model does not have; its labels are {self.known()}")

    def known(self) -> str:
        return ", ".join(self.id2label[i] for i in sorted(self.id2label))

    def resolve(self, value: Any) -> int | None:
        """The model label id for one data value, or None when no rule applies."""
        if isinstance(value, float) and value.is_integer():  # CSV/pandas turn int columns with gaps into floats
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and self.names is not None:
            if not 0 <= value < len(self.names):
                return None
            value = self.names[value]
        if value is None or isinstance(value, (bool, float)):
            return None
        key = str(value).strip()
        return self._lookup(self.label_map.get(key, key))

    def _lookup(self, key: str) -> int | None:
        if key.lower() in self._by_name:
            return self._by_name[key.lower()]
        if key.lstrip("-").isdigit() and int(key) in self.id2label:
            return int(key)
        return None


def with_string_ids(examples: datasets.Dataset) -> datasets.Dataset:
    """Examples with an `id` column of strings: the data's own ids (GLUE's int idx), else the row index."""
    if "id" not in examples.column_names:
        return examples.add_column("id", [str(i) for i in range(len(examples))])
    if examples.features["id"] != datasets.Value("string"):
        return examples.cast_column("id", datasets.Value("string"))
    return examples
