"""The embedded SQuAD samples are valid official-format files with exact answer offsets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cpueval.assets import SAMPLE_SQUAD, SAMPLE_SQUAD_V2, sample_texts


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _paragraphs(squad: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for article in squad["data"] for p in article["paragraphs"]]


def _qas(squad: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(p["context"], qa) for p in _paragraphs(squad) for qa in p["qas"]]


def _check_answer(context: str, answer: dict[str, Any]) -> None:
    assert set(answer) == {"text", "answer_start"}
    start, text = answer["answer_start"], answer["text"]
    assert isinstance(start, int) and text
    assert context[start : start + len(text)] == text


@pytest.mark.parametrize("path", [SAMPLE_SQUAD, SAMPLE_SQUAD_V2], ids=["v1.1", "v2.0"])
def test_structure_and_offsets(path: Path) -> None:
    squad = _load(path)
    assert set(squad) == {"version", "data"}
    for article in squad["data"]:
        assert isinstance(article["title"], str) and article["title"]
        for paragraph in article["paragraphs"]:
            assert isinstance(paragraph["context"], str) and paragraph["context"]
            assert paragraph["qas"]
    ids = [qa["id"] for _, qa in _qas(squad)]
    assert len(ids) == len(set(ids)), "question ids must be unique"
    for context, qa in _qas(squad):
        assert isinstance(qa["question"], str) and qa["question"].strip()
        for answer in qa["answers"] + qa.get("plausible_answers", []):
            _check_answer(context, answer)


def test_v1_format_and_size() -> None:
    squad = _load(SAMPLE_SQUAD)
    assert squad["version"] == "1.1"
    qas = _qas(squad)
    assert len(_paragraphs(squad)) >= 6
    assert 35 <= len(qas) <= 50
    for _, qa in qas:
        assert set(qa) == {"id", "question", "answers"}
        assert 1 <= len(qa["answers"]) <= 3
    assert any(len(qa["answers"]) > 1 for _, qa in qas), "some questions need several gold answers"


def test_v1_edge_cases_present() -> None:
    squad = _load(SAMPLE_SQUAD)
    qas = _qas(squad)
    answers = [(c, a) for c, qa in qas for a in qa["answers"]]
    assert any(a["answer_start"] == 0 for _, a in answers), "an answer at the start of a context"
    assert any(a["answer_start"] + len(a["text"]) == len(c) for c, a in answers), "an answer at the end"
    assert any(len(qa["question"].split()) > 40 for _, qa in qas), "a question longer than 40 words"
    long_ones = [p for p in _paragraphs(squad) if 450 <= len(p["context"].split()) <= 600]
    assert long_ones, "a long paragraph (450-600 words) that overflows one window"


def test_v2_format_and_size() -> None:
    squad = _load(SAMPLE_SQUAD_V2)
    assert squad["version"] == "v2.0"
    qas = [qa for _, qa in _qas(squad)]
    assert 18 <= len(qas) <= 25
    impossible = [qa for qa in qas if qa["is_impossible"]]
    assert 6 <= len(impossible) <= 10
    for qa in qas:
        assert isinstance(qa["is_impossible"], bool)
        assert set(qa) <= {"id", "question", "answers", "is_impossible", "plausible_answers"}
        if qa["is_impossible"]:
            assert qa["answers"] == []
        else:
            assert 1 <= len(qa["answers"]) <= 3
            assert "plausible_answers" not in qa
    assert any("plausible_answers" in qa for qa in impossible)


def test_sample_texts_cover_both_files() -> None:
    texts = sample_texts()
    assert len(texts) == len(set(texts))
    for path in (SAMPLE_SQUAD, SAMPLE_SQUAD_V2):
        for context, qa in _qas(_load(path)):
            assert context in texts and qa["question"] in texts
