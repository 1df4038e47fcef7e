"""Entity-level token-classification scores against counts worked out by hand."""

import pytest

from cpueval.metrics import token_classification_metrics

# Gold entities: PER(0-1), LOC(3-4), ORG(6) in sentence 0; MISC(0) in sentence 1 -> 4.
# Predicted:     PER(0-1) right, LOC(3-3) boundary error, PER(6) wrong type; MISC(0) right -> 4, 2 correct.
GOLD = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG"], ["B-MISC", "O"]]
PRED = [["B-PER", "I-PER", "O", "B-LOC", "O", "O", "B-PER"], ["B-MISC", "O"]]


def test_entity_counting_with_boundary_and_type_errors() -> None:
    result = token_classification_metrics(GOLD, PRED)
    assert (result["precision"], result["recall"], result["f1"]) == (50.0, 50.0, 50.0)  # 2/4, 2/4
    assert result["accuracy"] == pytest.approx(100 * 7 / 9)  # tokens 4 and 6 of sentence 0 are wrong
    assert result["per_type"] == {
        # PER: predicted twice (one wrong type), gold once, found once.
        "PER": {"precision": 50.0, "recall": 100.0, "f1": pytest.approx(100 * 2 / 3), "number": 1},
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1},
        "ORG": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1},
        "MISC": {"precision": 100.0, "recall": 100.0, "f1": 100.0, "number": 1},
    }


def test_strict_iob2_agrees_on_well_formed_tags() -> None:
    assert token_classification_metrics(GOLD, PRED, mode="strict") == token_classification_metrics(GOLD, PRED)


# IOB1: I- opens an entity; B- only separates two adjacent entities of one type.
# Gold: PER(0-1), PER(2), LOC(4). Predicted: PER(0-2), LOC(4). Only LOC matches.
IOB1_GOLD = [["I-PER", "I-PER", "B-PER", "O", "I-LOC"]]
IOB1_PRED = [["I-PER", "I-PER", "I-PER", "O", "I-LOC"]]


@pytest.mark.parametrize("mode", ["default", "strict"])
def test_iob1_input(mode: str) -> None:
    result = token_classification_metrics(IOB1_GOLD, IOB1_PRED, scheme="IOB1", mode=mode)
    assert result["precision"] == 50.0  # 1 of 2 predicted
    assert result["recall"] == pytest.approx(100 / 3)  # 1 of 3 gold
    assert result["f1"] == pytest.approx(40.0)  # 2 * (1/2) * (1/3) / (5/6)
    assert result["accuracy"] == 80.0  # token 2: B-PER vs I-PER
    assert result["per_type"]["PER"]["number"] == 2
    assert result["per_type"]["LOC"]["f1"] == 100.0


def test_strict_iob2_drops_entities_that_start_with_i() -> None:
    # Read as IOB2, only gold B-PER(2) is a valid entity; every predicted I- run is invalid, so nothing is found.
    result = token_classification_metrics(IOB1_GOLD, IOB1_PRED, scheme="IOB2", mode="strict")
    assert (result["precision"], result["recall"], result["f1"]) == (0.0, 0.0, 0.0)
    assert result["per_type"] == {"PER": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1}}


def test_no_entities_at_all() -> None:
    result = token_classification_metrics([["O", "O"]], [["O", "O"]])
    assert result == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 100.0, "per_type": {}}


@pytest.mark.parametrize(
    ("true_tags", "pred_tags", "kwargs", "message"),
    [
        ([["O"]], [["O"]], {"scheme": "BIOES"}, "unknown scheme 'BIOES'"),
        ([["O"]], [["O"]], {"mode": "lenient"}, "unknown mode 'lenient'"),
        ([["O"], ["O"]], [["O"]], {}, "2 gold sentences but 1 predicted"),
        ([["O", "O"]], [["O"]], {}, "sentence 0: 2 gold tags but 1 predicted"),
        ([["O"]], [["PER"]], {}, r"\['PER'\]"),
    ],
)
def test_invalid_inputs(true_tags, pred_tags, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        token_classification_metrics(true_tags, pred_tags, **kwargs)
