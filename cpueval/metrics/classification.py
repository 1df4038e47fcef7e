"""Sequence-classification scores (GLUE-style tasks).

Units: accuracy, macro_f1 and f1 are percentages in [0, 100], the convention of
the SQuAD scores, so every table in a report reads the same way;
matthews_correlation is the raw coefficient in [-1, 1], as GLUE reports it.

macro_f1 averages over the classes that occur in ``labels`` or ``predictions``
(scikit-learn's default, and what HF ``evaluate``'s f1 with average="macro"
gives); a class that never occurs on either side has no defined F1 and is not
averaged in as a zero. ``num_labels`` validates the ids and decides whether
the binary-only scores (f1 of the positive class, Matthews) are reported.
"""

from collections.abc import Sequence



def classification_metrics(
    labels: Sequence[int],
    predictions: Sequence[int],
    num_labels: int,
    positive_label: int | None = None,
) -> dict[str, float]:
    """accuracy and macro_f1 always; f1 and matthews_correlation when ``num_labels == 2``.

    ``positive_label`` (default 1) names the class whose F1 is reported; it is
    only meaningful for binary tasks, so passing it otherwise is an error.
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef  # slow import: not at config time

    _validate(labels, predictions, num_labels, positive_label)
    result = {
        "accuracy": 100.0 * float(accuracy_score(labels, predictions)),
        "macro_f1": 100.0 * float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }
    if num_labels == 2:
        positive = 1 if positive_label is None else positive_label
        positive_f1 = f1_score(labels, predictions, pos_label=positive, average="binary", zero_division=0)
        result["f1"] = 100.0 * float(positive_f1)
        result["matthews_correlation"] = float(matthews_corrcoef(labels, predictions))
    return result


def _validate(labels: Sequence[int], predictions: Sequence[int], num_labels: int, positive_label: int | None) -> None:
    """Reject inputs sklearn would silently score differently (e.g. -100 padding ids, wrong lengths)."""
    if num_labels < 2:
        raise ValueError(f"num_labels must be at least 2, got {num_labels}")
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    if not labels:
        raise ValueError("no examples to score")
    out_of_range = sorted({value for value in (*labels, *predictions) if not 0 <= value < num_labels})
    if out_of_range:
        raise ValueError(f"label ids must lie in [0, {num_labels}); found {out_of_range[:10]}")
    if positive_label is not None and (num_labels != 2 or positive_label not in (0, 1)):
        raise ValueError(f"positive_label={positive_label} needs a binary task and a label id 0 or 1")
