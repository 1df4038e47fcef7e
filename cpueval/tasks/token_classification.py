"""Token classification (NER) with run_ner.py's --do_eval semantics, scored by seqeval.

Data: CoNLL text (one token per line, the tag in the LAST column, blank lines between sentences,
-DOCSTART- lines skipped; the `conll` reader registered below) or JSON/JSONL/parquet rows with
`tokens` and `tags` (tag strings, or ints named by task.label_list or the data's ClassLabel names).

Sub-words: words are tokenized with is_split_into_words=True; a word's FIRST sub-token carries its
label and its prediction, later sub-tokens are ignored (label -100), as run_ner.py does.

Long sentences are not truncated: they are cut into windows of whole words that fit
max_seq_length, consecutive windows sharing about task.stride sub-tokens. A word in several windows
is predicted from the one where it lies farthest (in words) from the window's edges, the first such
window on a tie, so every word is predicted exactly once and with the most context on both sides.
results.json's task_stats count the split sentences.

Schemes: task.scheme is the tagging scheme of the gold data (IOB1: I- opens an entity, B- only
between two adjacent entities of one type; IOB2: B- opens every entity). task.mode=default decodes
entities leniently like conlleval; strict decodes by task.scheme's rules. When the model was trained
on another scheme (task.model_scheme, e.g. an IOB2 model on the original IOB1 CoNLL-2003 files) its
predictions are re-encoded into task.scheme before scoring.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import datasets
import numpy as np

from cpueval.data import register_reader
from cpueval.errors import UserError
from cpueval.metrics.token_classification import token_classification_metrics
from cpueval.records import write_lines_atomic
from cpueval.tasks.base import FeatureOutputs, LabelSpace, Predictions, Task, TaskConfig, with_string_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# CoNLL-2003 in the order of the hub data set's ClassLabel (and of the builtin model's head).
CONLL2003_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
IGNORED = -100  # label of sub-tokens that are not a word's first (the value transformers' losses skip)
_IOB_TAG = re.compile(r"O|[BI]-.+")


class Scheme(StrEnum):
    IOB1 = "IOB1"
    IOB2 = "IOB2"


class Scoring(StrEnum):
    default = "default"
    strict = "strict"


@dataclass
class TokenClassificationConfig(TaskConfig):
    _target_: str = "cpueval.tasks.token_classification.TokenClassification"
    name: str = "token_classification"
    max_seq_length: int = 256
    # sub-tokens shared by consecutive windows of a sentence longer than max_seq_length
    stride: int = 32
    scheme: Scheme = Scheme.IOB2  # IOB1 | IOB2: the gold data's tagging scheme
    mode: Scoring = Scoring.default  # default (conlleval, lenient) | strict (task.scheme's rules)
    # the scheme the model predicts in (null: task.scheme); predictions are re-encoded when they differ
    model_scheme: Optional[Scheme] = None
    # names of integer tags (tag i is label_list[i]); null: the data's ClassLabel names, else model ids
    label_list: Optional[list[str]] = None
    # data tag -> model label, e.g. B-PERSON -> B-PER
    label_map: dict[str, str] = field(default_factory=dict)


SCHEMA = TokenClassificationConfig


class TokenClassification(Task):
    auto_model = "AutoModelForTokenClassification"
    required_columns = ("tokens", "tags")
    output_names = ("logits",)
    architecture_suffix = "ForTokenClassification"
    per_token = True
    version = 1
    config: TokenClassificationConfig
    labels: LabelSpace

    def validate_config(self) -> None:
        super().validate_config()
        c = self.config
        if not 0 <= c.stride < c.max_seq_length // 2:
            raise UserError(f"task.stride={c.stride} must be >= 0 and below half of task.max_seq_length="
                            f"{c.max_seq_length}, so that windows move forward")

    def builtin_labels(self) -> list[str] | None:
        return list(self.config.label_list or CONLL2003_LABELS)

    def validate_model(self, model: PreTrainedModel, source: str) -> None:
        super().validate_model(model, source)
        self.set_labels(model.config.id2label, source)

    def set_labels(self, id2label: dict[Any, str], source: str = "the model") -> None:
        """The model's tags; validate_model calls it (tests may call it directly)."""
        bad = [tag for tag in id2label.values() if not _IOB_TAG.fullmatch(tag)]
        if bad:
            raise UserError(f"model.name_or_path={source} has labels {bad[:5]} that are not O, B-<type> or "
                            f"I-<type>; entity scoring needs IOB tags")
        self.labels = LabelSpace(id2label, self.config.label_map)

    # -- examples ----------------------------------------------------------------------------
    def prepare_examples(self, examples: datasets.Dataset, source: str) -> datasets.Dataset:
        """Tags -> model label ids (`tag_ids`) and the model's names for them (`tags`)."""
        labels = LabelSpace(self.labels.id2label, self.config.label_map, self._int_tag_names(examples))
        lines = list(examples["line"]) if "line" in examples.column_names else None
        tag_ids = []
        for row, (tokens, tags) in enumerate(zip(examples["tokens"], examples["tags"])):
            if len(tokens) != len(tags):
                raise UserError(f"{_where(source, lines, row, 0)}: {len(tokens)} tokens but {len(tags)} tags; "
                                f"give one tag per token")
            tag_ids.append([_resolve_tag(labels, tag, _where(source, lines, row, i)) for i, tag in enumerate(tags)])
        names = [[self.labels.id2label[i] for i in ids] for ids in tag_ids]
        examples = with_string_ids(examples)
        return examples.remove_columns("tags").add_column("tags", names).add_column("tag_ids", tag_ids)

    def _int_tag_names(self, examples: datasets.Dataset) -> list[str] | None:
        if self.config.label_list:
            return list(self.config.label_list)
        inner = getattr(examples.features["tags"], "feature", None)  # Sequence(ClassLabel) / List(ClassLabel)
        return list(inner.names) if isinstance(inner, datasets.ClassLabel) else None

    # -- pre-processing ------------------------------------------------------------------------
    def tokenization_key(self) -> dict[str, Any]:
        return {**super().tokenization_key(), "stride": self.config.stride}

    def tokenize(self, examples: datasets.Dataset, tokenizer: PreTrainedTokenizerBase) -> datasets.Dataset:
        max_length = min(self.config.max_seq_length, tokenizer.model_max_length)
        budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        if budget <= self.config.stride:
            raise UserError(f"task.max_seq_length={max_length} leaves {budget} tokens per window after special "
                            f"tokens, not more than task.stride={self.config.stride}; raise it")

        def windows(batch: dict[str, list]) -> dict[str, list]:
            plans = [window for sentence, tag_ids, example_id in zip(batch["tokens"], batch["tag_ids"], batch["id"])
                     for window in _plan_sentence(example_id, sentence, tag_ids, tokenizer, budget, self.config.stride)]
            encoded = tokenizer([w.words for w in plans], is_split_into_words=True, truncation=True,
                                max_length=max_length, return_token_type_ids=True,
                                padding="max_length" if self.config.pad_to_max_length else False)
            aligned = [_first_subtokens(encoded.word_ids(k), w) for k, w in enumerate(plans)]
            return {**dict(encoded), "example_id": [w.example_id for w in plans],
                    "labels": [labels for labels, _ in aligned], "predict_word": [words for _, words in aligned]}

        return examples.map(windows, batched=True, remove_columns=examples.column_names,
                            desc="Tokenizing words into windows")

    def task_stats(self, examples: datasets.Dataset, features: datasets.Dataset) -> dict[str, Any]:
        windows: dict[str, int] = {}
        for example_id in features["example_id"]:
            windows[example_id] = windows.get(example_id, 0) + 1
        return {"split_sentences": sum(n > 1 for n in windows.values()), "windows": len(features),
                "max_seq_length": self.config.max_seq_length, "stride": self.config.stride}

    # -- post-processing, metrics, files -------------------------------------------------------
    def postprocess(self, examples: datasets.Dataset, features: datasets.Dataset,
                    outputs: Sequence[FeatureOutputs]) -> Predictions:
        predicted = {i: [None] * len(tokens) for i, tokens in zip(examples["id"], examples["tokens"])}
        for f, (example_id, predict_word) in enumerate(zip(features["example_id"], features["predict_word"])):
            best = np.asarray(outputs[f]["logits"]).argmax(axis=-1)
            for position, word in enumerate(predict_word):
                if word >= 0:
                    predicted[example_id][word] = self.labels.id2label[int(best[position])]
        missing = [i for i, tags in predicted.items() if None in tags]
        if missing:  # a pre-processing bug, not a user error: every word has exactly one owning window
            raise RuntimeError(f"no prediction for some words of sentence(s) {missing[:5]}")
        source, target = self.config.model_scheme or self.config.scheme, self.config.scheme
        if source != target:
            predicted = {i: encode_entities(decode_entities(tags), len(tags), target) for i, tags in predicted.items()}
        return Predictions(by_example=predicted, extra={})

    def compute_metrics(self, examples: datasets.Dataset, predictions: Predictions) -> dict[str, float]:
        gold = examples["tags"]
        predicted = [predictions.by_example[i] for i in examples["id"]]
        scores = token_classification_metrics(gold, predicted, scheme=self.config.scheme, mode=self.config.mode)
        # flat, with run_ner.py's names for the per-type scores (PER_f1, ORG_number, ...)
        per_type = {f"{name}_{key}": value for name, row in scores.pop("per_type").items() for key, value in row.items()}
        return {**scores, **per_type}

    def headline_metrics(self) -> tuple[str, ...]:
        return ("f1", "accuracy")

    def write_predictions(self, examples: datasets.Dataset, predictions: Predictions, out_dir: Path) -> list[Path]:
        """CoNLL: `token gold predicted` per line, a blank line after each sentence."""
        def lines():
            for example_id, tokens, gold in zip(examples["id"], examples["tokens"], examples["tags"]):
                for token, g, p in zip(tokens, gold, predictions.by_example[example_id]):
                    yield f"{_one_field(token)} {g} {p}"
                yield ""
        return [write_lines_atomic(out_dir / "predictions.conll", lines())]


# -- windows -----------------------------------------------------------------------------------
def plan_windows(pieces: Sequence[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) whose sub-tokens fit `budget`; each next window starts so that it
    repeats at most `stride` sub-tokens of whole words (and always moves forward). A single word
    longer than the budget gets a window of its own (the tokenizer truncates its tail)."""
    spans, start, n = [], 0, len(pieces)
    while True:
        end, used = start, 0
        while end < n and (end == start or used + pieces[end] <= budget):
            used += pieces[end]
            end += 1
        spans.append((start, end))
        if end >= n:
            return spans
        next_start, overlap = end, 0
        while next_start - 1 > start and overlap + pieces[next_start - 1] <= stride:
            next_start -= 1
            overlap += pieces[next_start]
        start = next_start


def owning_windows(spans: Sequence[tuple[int, int]], num_words: int) -> list[int]:
    """For each word, the window it is predicted from: the one where its distance (in words) to the
    nearer window edge is largest; the earlier window on a tie."""
    owner, best = [-1] * num_words, [-1] * num_words
    for w, (start, end) in enumerate(spans):
        for i in range(start, end):
            margin = min(i - start, end - 1 - i)
            if margin > best[i]:
                owner[i], best[i] = w, margin
    return owner


@dataclass
class _Window:
    example_id: str
    start: int  # index of the window's first word in the sentence
    words: list[str]
    owned: list[bool]  # per word: this window supplies its prediction
    tag_ids: list[int]


def _plan_sentence(example_id: str, tokens: list[str], tag_ids: list[int], tokenizer: PreTrainedTokenizerBase,
                   budget: int, stride: int) -> list[_Window]:
    words, pieces = _printable_words(tokens, tokenizer)
    spans = plan_windows(pieces, budget, stride)
    owner = owning_windows(spans, len(words))
    return [_Window(example_id, start, words[start:end], [owner[i] == w for i in range(start, end)],
                    tag_ids[start:end]) for w, (start, end) in enumerate(spans)]


def _printable_words(tokens: list[str], tokenizer: PreTrainedTokenizerBase) -> tuple[list[str], list[int]]:
    """The words and their sub-token counts. A word the tokenizer turns into nothing (a control or
    zero-width character) becomes the unknown token, so that every word has a first sub-token."""
    encoded = tokenizer(tokens, is_split_into_words=True, add_special_tokens=False)
    pieces = [0] * len(tokens)
    for word in encoded.word_ids():
        if word is not None:
            pieces[word] += 1
    words = [t if n else tokenizer.unk_token for t, n in zip(tokens, pieces)]
    return words, [max(n, 1) for n in pieces]


def _first_subtokens(word_ids: list[Optional[int]], window: _Window) -> tuple[list[int], list[int]]:
    """Per token of one window: the gold label id on a word's first sub-token (-100 elsewhere), and
    the sentence-level word index where this window supplies that word's prediction (-1 elsewhere).
    Windows hold whole words, so the first sub-token of a word in the window is the word's first."""
    labels, predict, previous = [], [], None
    for word in word_ids:
        first = word is not None and word != previous
        labels.append(window.tag_ids[word] if first else IGNORED)
        predict.append(window.start + word if first and window.owned[word] else -1)
        previous = word
    return labels, predict


# -- schemes -----------------------------------------------------------------------------------
def decode_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities (type, start, end) decoded leniently, as conlleval does: B-X opens one, I-X opens
    one after O or after another type; IOB1 and IOB2 decode alike."""
    entities: list[tuple[str, int, int]] = []
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        continues = prefix == "I" and name == kind
        if kind is not None and not continues:
            entities.append((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = name, i
    return entities


def encode_entities(entities: Sequence[tuple[str, int, int]], length: int, scheme: str) -> list[str]:
    """Tags for entities in IOB2 (B- opens each) or IOB1 (I- opens, B- only right after an entity of
    the same type)."""
    tags = ["O"] * length
    previous_end, previous_kind = -1, None
    for kind, start, end in entities:
        adjacent = start == previous_end and kind == previous_kind
        opening = "B" if scheme == "IOB2" or adjacent else "I"
        tags[start:end] = [f"{opening}-{kind}"] + [f"I-{kind}"] * (end - start - 1)
        previous_end, previous_kind = end, kind
    return tags


def _where(source: str, lines: list[int] | None, row: int, token: int) -> str:
    """Where a token is, for errors: its line in a CoNLL file, else its row and position."""
    return f"{source}:{lines[row] + token}" if lines else f"{source} row {row + 1}, token {token + 1}"


def _resolve_tag(labels: LabelSpace, tag: Any, where: str) -> int:
    label_id = labels.resolve(tag)
    if label_id is None:
        raise UserError(f"{where}: tag {tag!r} is not a label of the model ({labels.known()}); map it with "
                        f"++task.label_map.{tag}=<model label>" + ("" if labels.names is None else
                                                                    " or fix task.label_list"))
    return label_id


def _one_field(token: str) -> str:
    """Tokens go into a whitespace-separated file: inner whitespace would shift the columns."""
    return re.sub(r"\s", "_", token) or "_"


# -- the CoNLL reader --------------------------------------------------------------------------
def read_conll(path: Path) -> datasets.Dataset:
    """Sentences of a CoNLL file as rows id, tokens, tags (the last column) and line (the 1-based
    line of the sentence's first token, so that errors can name a token's line)."""
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise UserError(f"data file {path} is empty; a CoNLL file has one `token ... tag` line per token")
    rows: list[dict[str, Any]] = []
    sentence: list[list[str]] = []
    first_line = 0
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            _close_sentence(rows, sentence, first_line)
            sentence = []
            continue
        if len(fields) < 2:
            raise UserError(f"{path}:{number}: {line.strip()!r} has no tag column; CoNLL lines are "
                            f"`token ... tag`, the tag in the last column")
        if sentence and len(fields) != len(sentence[0]):
            raise UserError(f"{path}:{number}: {len(fields)} columns, but the sentence starting on line "
                            f"{first_line} has {len(sentence[0])}; every line of a sentence needs the same columns")
        if not sentence:
            first_line = number
        sentence.append(fields)
    _close_sentence(rows, sentence, first_line)
    if not rows:
        raise UserError(f"data file {path} holds no sentences (only -DOCSTART- and blank lines)")
    return datasets.Dataset.from_list(rows)


def _close_sentence(rows: list[dict[str, Any]], sentence: list[list[str]], first_line: int) -> None:
    if sentence:
        rows.append({"id": str(len(rows)), "tokens": [f[0] for f in sentence], "tags": [f[-1] for f in sentence],
                     "line": first_line})


register_reader("conll", read_conll, ".conll", ".txt", ".iob", ".bio")
