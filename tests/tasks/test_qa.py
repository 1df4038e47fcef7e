"""QA pre/post-processing on hand-built cases: logits are set by hand on real tokenized windows."""

from __future__ import annotations

import re

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

from cpueval.assets.builtin import ensure_builtin_model
from cpueval.errors import UserError
from cpueval.tasks.qa import QATaskConfig, QuestionAnswering, best_spans

WORDS = ("the river runs past the old mill and the bridge near the town square where the market "
         "opens every morning").split()
CONTEXT = " ".join(WORDS[i % len(WORDS)] + str(i) for i in range(120))  # unique words: w0 ... w119


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = ensure_builtin_model("builtin:tiny-bert", "AutoModelForQuestionAnswering", cache_dir=tmp_path_factory.mktemp("m"))
    return AutoTokenizer.from_pretrained(path)


def make_task(**overrides) -> QuestionAnswering:
    return QuestionAnswering(QATaskConfig(**{"max_seq_length": 64, "doc_stride": 24, **overrides}))


def examples(context: str = CONTEXT, question: str = "   where is the mill?", answers=None, qid: str = "q1"):
    return datasets.Dataset.from_list([{"id": qid, "question": question, "context": context,
                                        "answers": answers or {"text": ["x"], "answer_start": [0]}}])


def token_at(feature: dict, char: int, edge: int = 0) -> int | None:
    """Index of the context token whose span starts (edge=0) or ends (edge=1) at `char`."""
    for i, offset in enumerate(feature["offset_mapping"]):
        if offset is not None and offset[edge] == char:
            return i
    return None


def logits_for(features: datasets.Dataset, spans: dict[int, tuple[int, int, float]]) -> list[dict]:
    """Per feature: low logits everywhere, `score` at the (start_char, end_char) span if given."""
    outputs = []
    for f, feature in enumerate(features):
        n = len(feature["input_ids"])
        start, end = np.full(n, -10.0, dtype=np.float32), np.full(n, -10.0, dtype=np.float32)
        if f in spans:
            s_char, e_char, score = spans[f]
            start[token_at(feature, s_char, 0)] = score
            end[token_at(feature, e_char, 1)] = score
        outputs.append({"start_logits": start, "end_logits": end})
    return outputs


def char_span(word: str, context: str = CONTEXT) -> tuple[int, int]:
    start = re.search(rf"\b{word}\b", context).start()
    return start, start + len(word)


def test_windows_overlap_by_doc_stride_and_cover_the_whole_context(tokenizer):
    task = make_task()
    features = task.tokenize(examples(), tokenizer)
    assert len(features) >= 3
    covered = set()
    for feature in features:
        assert len(feature["input_ids"]) <= 64
        assert feature["example_id"] == "q1"
        context_offsets = [o for o in feature["offset_mapping"] if o is not None]
        covered.update(range(context_offsets[0][0], context_offsets[-1][1]))
    assert covered >= set(range(len(CONTEXT))) - {i for i, ch in enumerate(CONTEXT) if ch == " "}
    # consecutive windows share doc_stride tokens of context
    first = [tuple(o) for o in features[0]["offset_mapping"] if o is not None]
    second = [tuple(o) for o in features[1]["offset_mapping"] if o is not None]
    assert len(set(first) & set(second)) == 24


def test_question_is_left_stripped_and_question_tokens_have_no_offsets(tokenizer):
    features = make_task().tokenize(examples(question="   where is the mill?"), tokenizer)
    ids = features[0]["input_ids"]
    sep = ids.index(tokenizer.sep_token_id)
    assert tokenizer.decode(ids[1:sep]) == "where is the mill?"
    assert all(o is None for o in features[0]["offset_mapping"][: sep + 1])


def test_answer_found_in_a_later_window_only(tokenizer):
    task = make_task()
    ex = examples()
    features = task.tokenize(ex, tokenizer)
    target = "morning119"  # the last word: only in the last window
    s, e = char_span(target)
    last = len(features) - 1
    assert token_at(features[0], s) is None and token_at(features[last], s) is not None
    predictions = task.postprocess(ex, features, logits_for(features, {last: (s, e, 8.0)}))
    assert predictions.by_example == {"q1": target}


def test_answer_in_the_overlap_takes_the_better_scored_window(tokenizer):
    task = make_task()
    ex = examples()
    features = task.tokenize(ex, tokenizer)
    shared = [tuple(o) for o in features[0]["offset_mapping"] if o is not None]
    shared = [o for o in shared if o in {tuple(p) for p in features[1]["offset_mapping"] if p is not None}]
    (s, _), (_, e_near) = shared[0], shared[0]
    other_s, other_e = shared[-1]
    outputs = logits_for(features, {0: (s, e_near, 3.0), 1: (other_s, other_e, 6.0)})
    assert task.postprocess(ex, features, outputs).by_example["q1"] == CONTEXT[other_s:other_e]


def test_answer_ending_on_the_last_context_token_of_a_window(tokenizer):
    task = make_task()
    ex = examples()
    features = task.tokenize(ex, tokenizer)
    offsets = [o for o in features[0]["offset_mapping"] if o is not None]
    (s, _), (_, e) = offsets[-2], offsets[-1]  # the window's last two context tokens
    predictions = task.postprocess(ex, features, logits_for(features, {0: (s, e, 9.0)}))
    assert predictions.by_example["q1"] == CONTEXT[s:e]


def test_a_span_longer_than_max_answer_length_is_never_chosen():
    offsets = [None] + [(i, i + 1) for i in range(10)] + [None]
    start = np.array([0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=np.float32)
    end = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0], dtype=np.float32)
    # token 1 .. token 10 is 10 tokens long: allowed at 10, not at 9
    assert best_spans(start, end, offsets, n_best=20, max_answer_length=10)[0][3:] == (0, 10)
    assert all(span[4] - span[3] < 10 for span in best_spans(start, end, offsets, 20, 9))


def test_long_question_still_leaves_room_for_context(tokenizer):
    question = " ".join(["where does the river run past the old mill"] * 2)
    features = make_task().tokenize(examples(question=question), tokenizer)
    assert all(any(o is not None for o in f["offset_mapping"]) for f in features)


def test_question_too_long_for_max_seq_length_is_a_user_error(tokenizer):
    question = " ".join(["where does the river run past the old mill"] * 10)
    with pytest.raises(UserError, match="max_seq_length"):
        make_task().tokenize(examples(question=question), tokenizer)


@pytest.mark.parametrize("stride", [0, 64, 100])
def test_doc_stride_must_be_below_max_seq_length(stride):
    with pytest.raises(UserError, match="doc_stride"):
        make_task(doc_stride=stride).validate_config()


def test_v2_null_answer_wins_unless_the_threshold_allows_the_span(tokenizer):
    ex = examples(answers={"text": [], "answer_start": []})
    s, e = char_span("mill6")
    for threshold, expected in ((0.0, ""), (5.0, "mill6")):
        task = make_task(version_2_with_negative=True, null_score_diff_threshold=threshold)
        features = task.tokenize(ex, tokenizer)
        outputs = logits_for(features, {0: (s, e, 2.0)})  # span score 4.0
        for out in outputs:  # null score (CLS start + end) 3.0 + 4.0 = 7.0 in every window
            out["start_logits"][0], out["end_logits"][0] = 3.0, 4.0
        predictions = task.postprocess(ex, features, outputs)
        # the null score is the minimum over windows (7.0); diff = 7.0 - 4.0 = 3.0
        assert predictions.extra["null_score_diffs"]["q1"] == pytest.approx(3.0)
        assert predictions.by_example["q1"] == expected


def test_v1_metrics_on_postprocessed_predictions(tokenizer):
    task = make_task()
    s, e = char_span("mill6")
    ex = examples(answers={"text": ["mill6", "the old mill6"], "answer_start": [s, s - 8]})
    features = task.tokenize(ex, tokenizer)
    predictions = task.postprocess(ex, features, logits_for(features, {0: (s, e, 5.0)}))
    assert task.compute_metrics(ex, predictions) == {"exact_match": 100.0, "f1": 100.0}
