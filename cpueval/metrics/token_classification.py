"""Token-classification (NER) scores with seqeval's entity-level semantics.

precision, recall and f1 are entity-level micro averages: an entity counts as
correct only when its type and both boundaries match. ``mode="default"``
decodes entities leniently like the CoNLL ``conlleval`` script (an ``I-`` tag
after ``O`` or after another type opens an entity), so IOB1 and IOB2 decode the
same way; ``mode="strict"`` decodes by the rules of ``scheme`` and drops
entities that break them (e.g. one starting with ``I-`` in IOB2). accuracy is
the fraction of tokens tagged correctly, ``O`` included.

All scores are percentages in [0, 100], like the SQuAD and classification
scores; ``number`` is the count of gold entities of a type.
"""

import re
import warnings
from typing import TypedDict

SCHEMES = ("IOB1", "IOB2")  # seqeval.scheme classes, imported when scoring (not at config time)
MODES = ("default", "strict")
_IOB_TAG = re.compile(r"O|[BI]-.+")


class EntityTypeScores(TypedDict):
    precision: float
    recall: float
    f1: float
    number: int


class TokenClassificationScores(TypedDict):
    precision: float
    recall: float
    f1: float
    accuracy: float
    per_type: dict[str, EntityTypeScores]


def token_classification_metrics(
    true_tags: list[list[str]],
    pred_tags: list[list[str]],
    scheme: str = "IOB2",
    mode: str = "default",
) -> TokenClassificationScores:
    """Overall entity precision/recall/f1, token accuracy and per-type scores, in percent.

    Raises ValueError for an unknown scheme or mode, sentences or tokens that do
    not pair up, or a tag that is neither ``O`` nor ``B-``/``I-`` plus a type.
    """
    from seqeval import scheme as schemes
    from seqeval.metrics import accuracy_score, classification_report

    _validate(true_tags, pred_tags, scheme, mode)
    strict = {"mode": "strict", "scheme": getattr(schemes, scheme)} if mode == "strict" else {}
    with warnings.catch_warnings():
        # Without any entity seqeval's unused macro average is a mean of nothing; numpy warns about it.
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(true_tags, pred_tags, output_dict=True, zero_division=0, **strict)
    overall = report["micro avg"]
    return {
        "precision": 100.0 * float(overall["precision"]),
        "recall": 100.0 * float(overall["recall"]),
        "f1": 100.0 * float(overall["f1-score"]),
        "accuracy": 100.0 * float(accuracy_score(true_tags, pred_tags)),
        "per_type": {name: _type_scores(row) for name, row in report.items() if not name.endswith(" avg")},
    }


def _type_scores(row: dict) -> EntityTypeScores:
    return {
        "precision": 100.0 * float(row["precision"]),
        "recall": 100.0 * float(row["recall"]),
        "f1": 100.0 * float(row["f1-score"]),
        "number": int(row["support"]),
    }


def _validate(true_tags: list[list[str]], pred_tags: list[list[str]], scheme: str, mode: str) -> None:
    """Fail loudly where seqeval would raise a bare KeyError or score misaligned tags."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {sorted(SCHEMES)}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {list(MODES)}")
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"{len(true_tags)} gold sentences but {len(pred_tags)} predicted ones")
    for index, (gold, predicted) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if len(gold) != len(predicted):
            raise ValueError(f"sentence {index}: {len(gold)} gold tags but {len(predicted)} predicted ones")
        bad = [tag for tag in (*gold, *predicted) if not _IOB_TAG.fullmatch(tag)]
        if bad:
            raise ValueError(f"sentence {index}: tags {bad[:5]} are not O, B-<type> or I-<type>")
