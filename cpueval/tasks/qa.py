"""Extractive question answering with run_qa.py's --do_eval semantics (SQuAD v1.1 and v2.0).

Pre-processing: questions left-stripped, question + context tokenized with truncation of the
context only, overflowing windows of max_seq_length with doc_stride overlap, offsets kept for
context tokens only. Post-processing: per example, over all its windows, the n_best start and end
logits, spans inside the context and at most max_answer_length tokens long, best start+end score;
for v2 the null score (CLS) against the best span with null_score_diff_threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import datasets
import numpy as np

from cpueval.errors import UserError
from cpueval.metrics.squad import squad_v1, squad_v2
from cpueval.records import write_json_atomic
from cpueval.tasks.base import FeatureOutputs, Predictions, Task, TaskConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass
class QATaskConfig(TaskConfig):
    _target_: str = "cpueval.tasks.qa.QuestionAnswering"
    name: str = "qa"
    max_seq_length: int = 384
    doc_stride: int = 128
    n_best_size: int = 20
    max_answer_length: int = 30
    version_2_with_negative: bool = False
    null_score_diff_threshold: float = 0.0
    # also write the n-best candidates per question (nbest_predictions.json)
    write_nbest: bool = False


SCHEMA = QATaskConfig


class QuestionAnswering(Task):
    auto_model = "AutoModelForQuestionAnswering"
    required_columns = ("id", "question", "context", "answers")
    optional_columns = ("title",)
    output_names = ("start_logits", "end_logits")
    architecture_suffix = "ForQuestionAnswering"
    version = 1
    config: QATaskConfig

    def validate_config(self) -> None:
        super().validate_config()
        c = self.config
        if c.doc_stride <= 0 or c.doc_stride >= c.max_seq_length:
            raise UserError(f"task.doc_stride={c.doc_stride} must be > 0 and < task.max_seq_length="
                            f"{c.max_seq_length} (run_qa.py used 128 with 384)")
        if c.n_best_size <= 0 or c.max_answer_length <= 0:
            raise UserError(f"task.n_best_size={c.n_best_size} and task.max_answer_length="
                            f"{c.max_answer_length} must be > 0")

    def prepare_examples(self, examples: datasets.Dataset, source: str) -> datasets.Dataset:
        features = examples.features
        answers = features.get("answers")
        # flat JSON/CSV may carry answers as a JSON string; nested squad already is {text, answer_start}
        if answers is not None and not isinstance(answers, dict) and getattr(answers, "dtype", None) == "string":
            raise UserError(f"{source}: column 'answers' must be {{'text': [...], 'answer_start': [...]}}, "
                            f"not a string (convert CSV answers to JSON lines or the SQuAD format)")
        if "id" in examples.column_names and len(set(examples["id"])) != len(examples):
            raise UserError(f"{source}: question ids in column 'id' are not unique")
        for question_id, answers in zip(examples["id"], examples["answers"]):
            self._check_answers(question_id, answers, source)
        return examples

    def _check_answers(self, question_id: str, answers: Any, source: str) -> None:
        """Gold answers are scored only after the forward loop: check them now, before any compute."""
        where = f"{source} question {question_id!r}"
        if not (isinstance(answers, dict) and isinstance(answers.get("text"), list)
                and isinstance(answers.get("answer_start"), list)):
            raise UserError(f"{where}: answers must be {{'text': [...], 'answer_start': [...]}}, got {answers!r:.80}")
        texts, starts = answers["text"], answers["answer_start"]
        if len(texts) != len(starts):
            raise UserError(f"{where}: {len(texts)} answer texts but {len(starts)} answer_start values")
        bad = [s for s in starts if not isinstance(s, int) or isinstance(s, bool) or s < 0]
        if bad or not all(isinstance(t, str) for t in texts):
            what = f"answer_start {bad[0]!r} is not a character offset" if bad else "an answer text is not a string"
            raise UserError(f"{where}: {what}; fix the data")
        if not texts and not self.config.version_2_with_negative:
            raise UserError(f"{where} has no gold answer: SQuAD v1.1 scoring needs one per question; for SQuAD v2 "
                            f"data (unanswerable questions) set task.version_2_with_negative=true")

    # -- pre-processing --------------------------------------------------------------------
    def tokenization_key(self) -> dict[str, Any]:
        return {**super().tokenization_key(), "doc_stride": self.config.doc_stride}

    def tokenize(self, examples: datasets.Dataset, tokenizer: PreTrainedTokenizerBase) -> datasets.Dataset:
        max_length = min(self.config.max_seq_length, tokenizer.model_max_length)
        pad_on_right = tokenizer.padding_side == "right"

        def windows(batch: dict[str, list]) -> dict[str, list]:
            questions = [q.lstrip() for q in batch["question"]]
            first, second = (questions, batch["context"]) if pad_on_right else (batch["context"], questions)
            self._check_room(tokenizer, batch["id"], questions, max_length)
            encoded = tokenizer(
                first, second,
                truncation="only_second" if pad_on_right else "only_first",
                max_length=max_length,
                stride=self.config.doc_stride,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
                return_token_type_ids=True,
                padding="max_length" if self.config.pad_to_max_length else False,
            )
            context_index = 1 if pad_on_right else 0
            sample_of = encoded.pop("overflow_to_sample_mapping")
            encoded["example_id"] = [batch["id"][s] for s in sample_of]
            encoded["offset_mapping"] = [
                [tuple(o) if seq == context_index else None for o, seq in zip(offsets, encoded.sequence_ids(i))]
                for i, offsets in enumerate(encoded["offset_mapping"])
            ]
            return dict(encoded)

        return examples.map(windows, batched=True, remove_columns=examples.column_names,
                            desc="Tokenizing (question, context) windows")

    def _check_room(self, tokenizer: PreTrainedTokenizerBase, ids: list[str], questions: list[str],
                    max_length: int) -> None:
        """The fast tokenizer panics (not a Python error) when question + special tokens + doc_stride
        leave no room for context in a window: find such a question first and say which."""
        special = tokenizer.num_special_tokens_to_add(pair=True)
        lengths = [len(q) for q in tokenizer(questions, add_special_tokens=False)["input_ids"]]
        longest = int(np.argmax(lengths))
        if lengths[longest] + special + self.config.doc_stride >= max_length:
            raise UserError(
                f"task.max_seq_length={max_length} leaves no room for context: question {ids[longest]!r} has "
                f"{lengths[longest]} tokens, + {special} special tokens + task.doc_stride={self.config.doc_stride}; "
                f"raise max_seq_length or lower doc_stride")

    # -- post-processing -------------------------------------------------------------------
    def postprocess(self, examples: datasets.Dataset, features: datasets.Dataset,
                    outputs: Sequence[FeatureOutputs]) -> Predictions:
        c = self.config
        features_of: dict[str, list[int]] = {}
        for index, example_id in enumerate(features["example_id"]):
            features_of.setdefault(example_id, []).append(index)
        offsets_all = features["offset_mapping"]
        answers, nbest, score_diffs = {}, {}, {}
        for example in examples.select_columns(["id", "context"]):
            candidates, null_score = [], None
            for f in features_of.get(example["id"], []):
                start, end = outputs[f]["start_logits"], outputs[f]["end_logits"]
                feature_null = float(start[0] + end[0])
                if null_score is None or feature_null < null_score:
                    null_score = feature_null
                candidates.extend(best_spans(start, end, offsets_all[f], c.n_best_size, c.max_answer_length))
            candidates.sort(key=lambda s: s[0], reverse=True)
            candidates = candidates[: c.n_best_size]
            context = example["context"]
            ranked = [{"text": context[s:e], "start_logit": sl, "end_logit": el, "score": score}
                      for score, sl, el, s, e in candidates]
            if c.version_2_with_negative:
                null = {"text": "", "start_logit": null_score, "end_logit": 0.0, "score": null_score}
                ranked = sorted(ranked + [null], key=lambda p: p["score"], reverse=True)[: c.n_best_size]
            answers[example["id"]], diff = self._choose(ranked, null_score)
            if diff is not None:
                score_diffs[example["id"]] = diff
            nbest[example["id"]] = _with_probabilities(ranked)
        return Predictions(by_example=answers, extra={"nbest": nbest, "null_score_diffs": score_diffs})

    def _choose(self, ranked: list[dict[str, Any]], null_score: float | None) -> tuple[str, float | None]:
        spans = [p for p in ranked if p["text"] != ""]
        if not self.config.version_2_with_negative:
            return (spans[0]["text"] if spans else ""), None
        if not spans:
            return "", None
        best = spans[0]
        diff = float(null_score - best["start_logit"] - best["end_logit"])
        return ("" if diff > self.config.null_score_diff_threshold else best["text"]), diff

    # -- metrics and files -----------------------------------------------------------------
    def compute_metrics(self, examples: datasets.Dataset, predictions: Predictions) -> dict[str, float]:
        references = {i: list(a["text"]) for i, a in zip(examples["id"], examples["answers"])}
        if self.config.version_2_with_negative:
            return squad_v2(predictions.by_example, references)
        return squad_v1(predictions.by_example, references)

    def headline_metrics(self) -> tuple[str, ...]:
        return ("exact", "f1") if self.config.version_2_with_negative else ("exact_match", "f1")

    def write_predictions(self, examples: datasets.Dataset, predictions: Predictions, out_dir: Path) -> list[Path]:
        written = [write_json_atomic(out_dir / "predictions.json", predictions.by_example)]
        if self.config.version_2_with_negative:
            written.append(write_json_atomic(out_dir / "null_odds.json", predictions.extra["null_score_diffs"]))
        if self.config.write_nbest:
            written.append(write_json_atomic(out_dir / "nbest_predictions.json", predictions.extra["nbest"]))
        return written


def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, offsets: Sequence, n_best: int,
               max_answer_length: int) -> list[tuple[float, float, float, int, int]]:
    """Candidate answers of one window as (score, start_logit, end_logit, char_start, char_end):
    pairs of the n_best start and n_best end tokens that lie in the context, end >= start, and
    span at most max_answer_length tokens."""
    n = min(len(offsets), len(start_logits))
    start_logits, end_logits = start_logits[:n], end_logits[:n]
    starts = [int(i) for i in np.argsort(start_logits)[::-1][:n_best] if offsets[i] is not None]
    ends = [int(i) for i in np.argsort(end_logits)[::-1][:n_best] if offsets[i] is not None]
    if not starts or not ends:
        return []
    s, e = np.array(starts)[:, None], np.array(ends)[None, :]
    allowed = (e >= s) & (e - s + 1 <= max_answer_length)
    rows, cols = np.nonzero(allowed)  # row-major: the order run_qa.py's nested loops visit them
    spans = []
    for r, c in zip(rows, cols):
        si, ei = starts[r], ends[c]
        # summed in the logits' dtype, as run_qa.py does, so near-ties rank the same way
        score = float(start_logits[si] + end_logits[ei])
        spans.append((score, float(start_logits[si]), float(end_logits[ei]), offsets[si][0], offsets[ei][1]))
    return spans


def _with_probabilities(ranked: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Softmax over the n-best scores, as run_qa.py's nbest file has it."""
    if not ranked:
        return []
    scores = np.array([p["score"] for p in ranked])
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    return [{"text": p["text"], "probability": float(q), "start_logit": p["start_logit"],
             "end_logit": p["end_logit"]} for p, q in zip(ranked, probs)]
