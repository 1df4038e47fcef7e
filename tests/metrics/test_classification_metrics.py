"""Classification scores against confusion matrices worked out by hand."""

import math

import pytest

from cpueval.metrics import classification_metrics

# Binary, positive class 1: TP = 3, FN = 1, FP = 2, TN = 4.
LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PREDICTIONS = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]


def test_binary_hand_computed() -> None:
    result = classification_metrics(LABELS, PREDICTIONS, num_labels=2)
    assert result["accuracy"] == 70.0  # 7 of 10
    # F1(1) = 2TP / (2TP + FP + FN) = 6/9; F1(0) = 2*4 / (2*4 + 1 + 2) = 8/11.
    assert result["f1"] == pytest.approx(100 * 6 / 9)
    assert result["macro_f1"] == pytest.approx(100 * (6 / 9 + 8 / 11) / 2)
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (12 - 2) / sqrt(5*4*6*5)
    assert result["matthews_correlation"] == pytest.approx(10 / math.sqrt(600))
    assert set(result) == {"accuracy", "macro_f1", "f1", "matthews_correlation"}


def test_binary_positive_label_zero() -> None:
    result = classification_metrics(LABELS, PREDICTIONS, num_labels=2, positive_label=0)
    assert result["f1"] == pytest.approx(100 * 8 / 11)
    assert result["matthews_correlation"] == pytest.approx(10 / math.sqrt(600))  # symmetric in the classes


def test_multiclass_has_no_binary_scores() -> None:
    # Per class (TP, FP, FN): 0 -> (1, 1, 1) F1 1/2; 1 -> (2, 1, 0) F1 4/5; 2 -> (1, 0, 1) F1 2/3.
    result = classification_metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], num_labels=3)
    assert result == {
        "accuracy": pytest.approx(100 * 4 / 6),
        "macro_f1": pytest.approx(100 * (1 / 2 + 4 / 5 + 2 / 3) / 3),
    }


def test_macro_f1_skips_a_class_that_never_occurs() -> None:
    # Class 2 appears nowhere: macro over classes 0 (F1 2/3) and 1 (F1 4/5), not a zero for class 2.
    result = classification_metrics([0, 1, 0, 1], [0, 1, 1, 1], num_labels=3)
    assert result["macro_f1"] == pytest.approx(100 * (2 / 3 + 4 / 5) / 2)


def test_perfect_and_inverted_binary() -> None:
    assert classification_metrics([0, 1, 1], [0, 1, 1], 2) == {
        "accuracy": 100.0,
        "macro_f1": 100.0,
        "f1": 100.0,
        "matthews_correlation": 1.0,
    }
    assert classification_metrics([0, 1, 1], [1, 0, 0], 2)["matthews_correlation"] == -1.0


@pytest.mark.parametrize(
    ("labels", "predictions", "num_labels", "positive_label", "message"),
    [
        ([0, 1], [0], 2, None, "2 labels but 1 predictions"),
        ([], [], 2, None, "no examples"),
        ([0, -100], [0, 1], 2, None, r"\[-100\]"),
        ([0, 1], [0, 2], 2, None, r"\[0, 2\)"),
        ([0, 1], [0, 1], 3, 1, "binary"),
        ([0, 1], [0, 1], 2, 2, "binary"),
        ([0, 0], [0, 0], 1, None, "at least 2"),
    ],
)
def test_invalid_inputs(labels, predictions, num_labels, positive_label, message) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(labels, predictions, num_labels, positive_label)
