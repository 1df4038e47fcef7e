"""SQuAD v1.1 and v2.0 scores, reimplemented without network access.

The numbers must be comparable with published results, so every rule follows the
official ``evaluate-v1.1.py`` and ``evaluate-v2.0.py`` scripts, including their
arithmetic order (per-question scores are summed in reference order, then
``100.0 * total / count``), which makes the results equal to the last digit.

Inputs are plain mappings keyed by question id: ``predictions`` maps an id to the
predicted answer text, ``references`` maps an id to its gold answer texts (an
empty list marks an unanswerable SQuAD v2.0 question). Iterate references in
dataset-file order to reproduce the official float sums exactly.

Deviations, all on inputs the official scripts do not score:

* A question with no prediction scores 0 and still counts in every total. The
  v1.1 script does the same (after printing a message); the v2.0 script would
  crash on it, so v2.0 applies the v1.1 rule, and such a question is also left
  out of the best-threshold sweep (it is wrong at any threshold).
* Predictions for ids absent from ``references`` are ignored, as in both scripts.
"""

import logging
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation and the articles a/an/the, collapse whitespace.

    The steps run in the official order (punctuation goes before articles, so
    "the." loses its article too); any other order changes some scores.
    """
    lowered = text.lower()
    without_punctuation = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    without_articles = _ARTICLES.sub(" ", without_punctuation)
    return " ".join(without_articles.split())


def exact_match_score(prediction: str, ground_truth: str) -> int:
    """1 when both texts normalize to the same string, else 0."""
    return int(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score(prediction: str, ground_truth: str) -> float:
    """SQuAD v1.1 token F1: harmonic mean of bag-of-token precision and recall.

    No shared token gives 0, even when both sides normalize to nothing.
    """
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def f1_score_v2(prediction: str, ground_truth: str) -> float:
    """SQuAD v2.0 token F1: as v1.1, except that two empty answers agree (score 1).

    The empty string is how v2.0 encodes "no answer", so abstaining on an
    unanswerable question must earn full credit.
    """
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    if not prediction_tokens or not truth_tokens:
        return float(prediction_tokens == truth_tokens)
    return _token_f1(prediction_tokens, truth_tokens)


def _token_f1(prediction_tokens: list[str], truth_tokens: list[str]) -> float:
    """F1 of two token bags; the formula is kept verbatim so floats round like the official one."""
    num_same = sum((Counter(prediction_tokens) & Counter(truth_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def _best_over(metric: Callable[[str, str], float], prediction: str, ground_truths: Iterable[str]) -> float:
    """A prediction is as good as its closest gold answer."""
    return max(metric(prediction, truth) for truth in ground_truths)


def _percent(scores: Iterable[float], count: int) -> float:
    """Sum first, then scale: the official order, needed for identical rounding."""
    return 100.0 * sum(scores) / count


def _check_references(references: Mapping[str, Sequence[str]]) -> None:
    if not references:
        raise ValueError("references is empty: there is nothing to score")


def _warn_missing(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> None:
    missing = sum(1 for qid in references if qid not in predictions)
    if missing:
        logger.warning("%d of %d questions have no prediction and score 0", missing, len(references))


def squad_v1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1 exact match and F1 in percent, as ``evaluate-v1.1.py`` computes them.

    Every reference question counts; one without a prediction scores 0.
    Raises ValueError for empty references or a question without gold answers
    (v1.1 has none; the official script would crash on it).
    """
    _check_references(references)
    unanswerable = [qid for qid, truths in references.items() if not truths]
    if unanswerable:
        raise ValueError(f"SQuAD v1.1 needs gold answers for every question; none for {unanswerable[:5]}")
    _warn_missing(predictions, references)
    scored = [(predictions[qid], truths) for qid, truths in references.items() if qid in predictions]
    exact = [_best_over(exact_match_score, prediction, truths) for prediction, truths in scored]
    f1 = [_best_over(f1_score, prediction, truths) for prediction, truths in scored]
    return {"exact_match": _percent(exact, len(references)), "f1": _percent(f1, len(references))}


def squad_v2(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    no_answer_probs: Mapping[str, float] | None = None,
    no_answer_threshold: float = 1.0,
) -> dict[str, float | int]:
    """SQuAD v2.0 scores in percent, as ``evaluate-v2.0.py`` computes them.

    A question whose no-answer probability exceeds ``no_answer_threshold`` is
    scored as if the model abstained. Keys: exact, f1, total; HasAns_* and
    NoAns_* (each only when such questions exist); best_exact,
    best_exact_thresh, best_f1, best_f1_thresh (only with ``no_answer_probs``).

    Without ``no_answer_probs`` every probability is 0.0 and the best_* keys are
    left out, exactly like the official script run without ``--na-prob-file``.
    Both that script and HF ``evaluate`` (which requires a probability per
    prediction) give the same exact/f1 this way; HF's best_* computed from
    all-equal probabilities depend on input order rather than any threshold,
    so they are not reported. The exact/f1 keys do not depend on this choice.
    """
    _check_references(references)
    _warn_missing(predictions, references)
    if no_answer_probs is None:
        no_answer_probs = {qid: 0.0 for qid in predictions}
        include_best = False
    else:
        include_best = True
    answered = [qid for qid in references if qid in predictions]
    lacking = [qid for qid in answered if qid not in no_answer_probs]
    if lacking:
        raise ValueError(f"no_answer_probs lacks {len(lacking)} predicted questions, e.g. {lacking[:5]}")

    has_answer = {qid: bool(truths) for qid, truths in references.items()}
    exact_raw, f1_raw = _raw_scores_v2(predictions, references, answered)
    exact = _apply_threshold(exact_raw, no_answer_probs, has_answer, no_answer_threshold)
    f1 = _apply_threshold(f1_raw, no_answer_probs, has_answer, no_answer_threshold)

    result: dict[str, float | int] = _eval_block(exact, f1, list(references))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid in references if has_answer[qid] == wanted]
        if qids:
            result.update({f"{prefix}_{key}": value for key, value in _eval_block(exact, f1, qids).items()})
    if include_best:
        result.update(_best_thresholds(predictions, exact_raw, f1_raw, no_answer_probs, has_answer))
    return result


def _gold_answers_v2(truths: Sequence[str]) -> list[str]:
    """Gold texts that survive normalization; [""] (abstain) when none does."""
    return [truth for truth in truths if normalize_answer(truth)] or [""]


def _raw_scores_v2(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], answered: list[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-question exact and F1 before any no-answer threshold, in reference order."""
    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    for qid in answered:
        gold = _gold_answers_v2(references[qid])
        exact[qid] = _best_over(exact_match_score, predictions[qid], gold)
        f1[qid] = _best_over(f1_score_v2, predictions[qid], gold)
    return exact, f1


def _apply_threshold(
    scores: Mapping[str, float],
    no_answer_probs: Mapping[str, float],
    has_answer: Mapping[str, bool],
    threshold: float,
) -> dict[str, float]:
    """Replace the score of each question the model abstains on by 1 if it is unanswerable, else 0."""
    return {
        qid: float(not has_answer[qid]) if no_answer_probs[qid] > threshold else score
        for qid, score in scores.items()
    }


def _eval_block(exact: Mapping[str, float], f1: Mapping[str, float], qids: list[str]) -> dict[str, float | int]:
    """exact/f1/total over ``qids``; a question without a prediction adds 0 but counts."""
    return {
        "exact": _percent((exact.get(qid, 0) for qid in qids), len(qids)),
        "f1": _percent((f1.get(qid, 0) for qid in qids), len(qids)),
        "total": len(qids),
    }


def _best_thresholds(
    predictions: Mapping[str, str],
    exact_raw: Mapping[str, float],
    f1_raw: Mapping[str, float],
    no_answer_probs: Mapping[str, float],
    has_answer: Mapping[str, bool],
) -> dict[str, float]:
    """Best score over all no-answer thresholds, for exact and for F1."""
    best_exact, exact_thresh = _best_threshold(predictions, exact_raw, no_answer_probs, has_answer)
    best_f1, f1_thresh = _best_threshold(predictions, f1_raw, no_answer_probs, has_answer)
    return {
        "best_exact": best_exact,
        "best_exact_thresh": exact_thresh,
        "best_f1": best_f1,
        "best_f1_thresh": f1_thresh,
    }


def _best_threshold(
    predictions: Mapping[str, str],
    raw_scores: Mapping[str, float],
    no_answer_probs: Mapping[str, float],
    has_answer: Mapping[str, bool],
) -> tuple[float, float]:
    """Sweep the threshold upwards through the sorted no-answer probabilities.

    Starting from "abstain on everything" (every answered unanswerable question
    right), each question passed answers instead: an answerable one gains its
    raw score, an unanswerable one loses its point if the answer is non-empty.
    Ties are walked one by one in ``no_answer_probs`` order, as the official
    script does. The percentage is over all reference questions.
    """
    score: float = sum(1 for qid in raw_scores if not has_answer[qid])
    best_score, best_thresh = score, 0.0
    for qid in sorted(no_answer_probs, key=no_answer_probs.__getitem__):
        if qid not in raw_scores:
            continue
        if has_answer[qid]:
            score += raw_scores[qid]
        elif predictions[qid]:
            score -= 1
        if score > best_score:
            best_score, best_thresh = score, no_answer_probs[qid]
    return 100.0 * best_score / len(has_answer), best_thresh
