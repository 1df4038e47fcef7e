"""SQuAD v1.1/v2.0 scores against values worked out by hand.

(Equality with the official scripts on the full dev sets was checked separately;
those scripts are not vendored here.)
"""

import pytest

from cpueval.metrics import exact_match_score, f1_score, f1_score_v2, normalize_answer, squad_v1, squad_v2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Quick, brown FOX!", "quick brown fox"),
        ("an apple a day", "apple day"),
        ("theater anthem", "theater anthem"),  # articles only as whole words
        ("(the)", ""),  # punctuation goes first, then the bare article
        ("the-end", "theend"),  # a hyphen is deleted, not turned into a space
        ("U.S.", "us"),
        ("café—bar", "café—bar"),  # only ASCII punctuation is removed
        ("  x \t y\n", "x y"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_ignores_case_punctuation_and_articles() -> None:
    assert exact_match_score("The Apple.", "apple") == 1
    assert exact_match_score("apples", "apple") == 0


def test_f1_counts_repeated_tokens_as_a_bag() -> None:
    # pred [broncos, broncos], gold [broncos]: overlap 1, P = 1/2, R = 1, F1 = 2*(1/2)*1/(3/2) = 2/3
    assert f1_score("Broncos broncos", "Broncos") == pytest.approx(2 / 3)


def test_empty_answers_agree_only_in_v2() -> None:
    # Both normalize to "": v1.1 sees no shared token (F1 0) but still an exact match; v2.0 calls it agreement.
    assert f1_score("the", "a") == 0.0
    assert exact_match_score("the", "a") == 1
    assert f1_score_v2("the", "") == 1.0
    assert f1_score_v2("", "Denver") == 0.0


# q1: exact after normalization                       -> EM 1, F1 1
# q2: vs "Santa Clara, California": overlap 2 of 3 and 3 -> P = R = 2/3, F1 = 2/3
#     vs "Levi's Stadium": overlap 1, P = 1/3, R = 1/2  -> F1 = 0.4; the max over golds is 2/3, EM 0
# q3: no shared token                                  -> EM 0, F1 0
V1_REFERENCES = {
    "q1": ["Denver Broncos"],
    "q2": ["Santa Clara, California", "Levi's Stadium"],
    "q3": ["1989"],
}
V1_PREDICTIONS = {"q1": "The Denver Broncos!", "q2": "Santa Clara stadium", "q3": "1990"}


def test_squad_v1_hand_computed() -> None:
    result = squad_v1(V1_PREDICTIONS, V1_REFERENCES)
    assert result["exact_match"] == 100.0 / 3
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert set(result) == {"exact_match", "f1"}


def test_squad_v1_missing_prediction_scores_zero_but_counts() -> None:
    predictions = {"q2": "Santa Clara stadium", "q3": "1990", "extra": "ignored"}
    result = squad_v1(predictions, V1_REFERENCES)
    assert result["exact_match"] == 0.0
    assert result["f1"] == pytest.approx(100 * (2 / 3) / 3)


def test_squad_v1_rejects_unusable_references() -> None:
    with pytest.raises(ValueError, match="gold answers"):
        squad_v1({"q": "x"}, {"q": []})
    with pytest.raises(ValueError, match="empty"):
        squad_v1({}, {})


# q1, q2 answerable; q3, q4 unanswerable (no gold answer).
# Raw scores: q1 EM 1 F1 1; q2 EM 0 F1 2/3 (as in v1 above); q3 abstains correctly EM 1 F1 1; q4 answers, EM 0 F1 0.
V2_REFERENCES = {
    "q1": ["Denver Broncos"],
    "q2": ["Santa Clara, California"],
    "q3": [],
    "q4": [],
}
V2_PREDICTIONS = {"q1": "Denver Broncos", "q2": "Santa Clara stadium", "q3": "", "q4": "1990"}
V2_NO_ANSWER_PROBS = {"q1": 0.1, "q2": 0.6, "q3": 0.8, "q4": 0.7}


def test_squad_v2_without_probabilities_splits_has_and_no_answer() -> None:
    result = squad_v2(V2_PREDICTIONS, V2_REFERENCES)
    assert result == {
        "exact": 50.0,  # (1 + 0 + 1 + 0) / 4
        "f1": pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4),
        "total": 4,
        "HasAns_exact": 50.0,
        "HasAns_f1": pytest.approx(100 * (1 + 2 / 3) / 2),
        "HasAns_total": 2,
        "NoAns_exact": 50.0,
        "NoAns_f1": 50.0,
        "NoAns_total": 2,
    }


def test_squad_v2_threshold_turns_confident_abstentions_into_no_answer() -> None:
    # Threshold 1.0: no probability exceeds it, so the raw scores stand.
    default = squad_v2(V2_PREDICTIONS, V2_REFERENCES, V2_NO_ANSWER_PROBS)
    assert default["exact"] == 50.0
    # Threshold 0.5: q2 (0.6), q4 (0.7), q3 (0.8) abstain -> q2 0, q4 1, q3 1: EM = F1 = (1 + 0 + 1 + 1) / 4.
    half = squad_v2(V2_PREDICTIONS, V2_REFERENCES, V2_NO_ANSWER_PROBS, no_answer_threshold=0.5)
    assert (half["exact"], half["f1"]) == (75.0, 75.0)
    assert (half["HasAns_f1"], half["NoAns_f1"]) == (50.0, 100.0)
    # Threshold 0.65: only q4 and q3 abstain; q2 keeps its 2/3.
    upper = squad_v2(V2_PREDICTIONS, V2_REFERENCES, V2_NO_ANSWER_PROBS, no_answer_threshold=0.65)
    assert upper["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 1) / 4)


def test_squad_v2_best_thresholds() -> None:
    # Sweep in probability order q1 (0.1), q2 (0.6), q4 (0.7), q3 (0.8), starting from "abstain on all" = 2 points:
    #   EM: +1 -> 3 (best, at 0.1), +0 -> 3, -1 (q4 answers) -> 2, +0 -> 2
    #   F1: +1 -> 3, +2/3 -> 3 2/3 (best, at 0.6), -1 -> 2 2/3, +0 -> 2 2/3
    result = squad_v2(V2_PREDICTIONS, V2_REFERENCES, V2_NO_ANSWER_PROBS)
    assert result["best_exact"] == 75.0
    assert result["best_exact_thresh"] == 0.1
    assert result["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 4)
    assert result["best_f1_thresh"] == 0.6
    # The best threshold, applied, reproduces the best score.
    at_best = squad_v2(V2_PREDICTIONS, V2_REFERENCES, V2_NO_ANSWER_PROBS, no_answer_threshold=0.6)
    assert at_best["f1"] == pytest.approx(result["best_f1"])


def test_squad_v2_best_threshold_pays_for_answering_unanswerable_questions() -> None:
    # q4 (non-empty answer to an unanswerable question) now comes first: q4 (0.05), q1 (0.1), q2 (0.6), q3 (0.8).
    #   EM: 2 -1 -> 1, +1 -> 2, +0 -> 2, +0 -> 2: never above the start, so "abstain on all" (thresh 0.0) wins.
    #   F1: 2 -1 -> 1, +1 -> 2, +2/3 -> 2 2/3 (best, at 0.6), +0.
    probs = {**V2_NO_ANSWER_PROBS, "q4": 0.05}
    result = squad_v2(V2_PREDICTIONS, V2_REFERENCES, probs)
    assert (result["best_exact"], result["best_exact_thresh"]) == (50.0, 0.0)
    assert result["best_f1"] == pytest.approx(100 * (2 + 2 / 3) / 4)
    assert result["best_f1_thresh"] == 0.6


def test_squad_v2_only_reports_groups_that_exist() -> None:
    result = squad_v2({"q1": "Denver Broncos"}, {"q1": ["Denver Broncos"]})
    assert result == {
        "exact": 100.0,
        "f1": 100.0,
        "total": 1,
        "HasAns_exact": 100.0,
        "HasAns_f1": 100.0,
        "HasAns_total": 1,
    }


def test_squad_v2_gold_that_normalizes_to_nothing_is_answered_by_abstaining() -> None:
    # Official quirk: the question has an answer ("The"), but its only gold text normalizes to "", so gold is [""].
    result = squad_v2({"q": ""}, {"q": ["The"]})
    assert (result["exact"], result["HasAns_total"]) == (100.0, 1)


def test_squad_v2_missing_prediction_scores_zero_but_counts() -> None:
    predictions = {qid: text for qid, text in V2_PREDICTIONS.items() if qid != "q3"}
    result = squad_v2(predictions, V2_REFERENCES)
    assert (result["exact"], result["total"]) == (25.0, 4)  # (1 + 0 + 0 + 0) / 4
    assert (result["NoAns_exact"], result["NoAns_total"]) == (0.0, 2)
    # The sweep skips q3 and starts from 1 point (q4 abstaining): q1 (0.1) +1 -> 2 (best), q2 +0, q4 -1.
    # The denominator stays all 4 questions.
    swept = squad_v2(predictions, V2_REFERENCES, V2_NO_ANSWER_PROBS)
    assert (swept["best_exact"], swept["best_exact_thresh"]) == (50.0, 0.1)


def test_squad_v2_needs_a_probability_for_every_prediction() -> None:
    with pytest.raises(ValueError, match="no_answer_probs lacks 1"):
        squad_v2(V2_PREDICTIONS, V2_REFERENCES, {"q1": 0.1, "q2": 0.6, "q3": 0.8})
