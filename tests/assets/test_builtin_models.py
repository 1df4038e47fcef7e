"""The offline builtin models: build, load with the Auto classes, determinism, caching, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)

from cpueval.assets import SAMPLE_SQUAD, builtin
from cpueval.assets.builtin import BUILTIN_PREFIX, ensure_builtin_model, is_builtin

NAME = "builtin:tiny-bert"
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
AUTO = {
    "AutoModelForQuestionAnswering": AutoModelForQuestionAnswering,
    "AutoModelForSequenceClassification": AutoModelForSequenceClassification,
    "AutoModelForTokenClassification": AutoModelForTokenClassification,
}


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_builtin_model(NAME, "AutoModelForQuestionAnswering", cache_dir=tmp_path_factory.mktemp("cache"))


def _long_paragraph() -> dict[str, Any]:
    squad = json.loads(SAMPLE_SQUAD.read_text(encoding="utf-8"))
    paragraphs = [p for a in squad["data"] for p in a["paragraphs"]]
    return max(paragraphs, key=lambda p: len(p["context"]))


def test_is_builtin() -> None:
    assert BUILTIN_PREFIX == "builtin:"
    assert is_builtin(NAME)
    assert not is_builtin("bert-base-uncased")
    assert not is_builtin("/models/builtin:tiny-bert")


def test_tokenizer_is_fast_bert_style(qa_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(qa_dir)
    assert tokenizer.is_fast
    assert len(tokenizer) <= 4000
    enc = tokenizer("Who built it?", "Osric Pellan built the clock.", return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2
    assert set(enc["token_type_ids"]) == {0, 1}
    assert "[UNK]" not in tokenizer.tokenize("Zyxwvut quokka 2049!"), "unseen words fall back to pieces"


def test_long_paragraph_overflows(qa_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(qa_dir)
    paragraph = _long_paragraph()
    context = paragraph["context"]
    for qa in paragraph["qas"]:
        enc = tokenizer(
            qa["question"], context, truncation="only_second", max_length=384, stride=128,
            return_overflowing_tokens=True, return_offsets_mapping=True,
        )
        n_windows = len(enc["input_ids"])
        assert n_windows >= 2
        assert all(len(ids) <= 384 for ids in enc["input_ids"])
        # Every gold answer lies wholly inside at least one window's context span.
        answer = qa["answers"][0]
        start, end = answer["answer_start"], answer["answer_start"] + len(answer["text"])
        holders = [i for i in range(n_windows) if _window_span(enc, i)[0] <= start and end <= _window_span(enc, i)[1]]
        assert holders, qa["id"]
    assert holders[-1] == n_windows - 1, "the last question's answer sits in the last window"


def _window_span(enc: Any, i: int) -> tuple[int, int]:
    offsets = [o for o, s in zip(enc["offset_mapping"][i], enc.sequence_ids(i)) if s == 1]
    return offsets[0][0], offsets[-1][1]


@pytest.mark.parametrize(
    ("head", "labels", "n_labels"),
    [("AutoModelForQuestionAnswering", None, 2), ("AutoModelForSequenceClassification", ["negative", "positive"], 2),
     ("AutoModelForTokenClassification", NER_LABELS, len(NER_LABELS))],
)
def test_each_head_builds_loads_and_runs(tmp_path: Path, head: str, labels: list[str] | None, n_labels: int) -> None:
    path = ensure_builtin_model(NAME, head, labels=labels, cache_dir=tmp_path)
    assert path.parent == tmp_path / "builtin" and path.name.startswith(f"tiny-bert-{head}-")
    assert (path / "model.safetensors").is_file()
    info = json.loads((path / "cpueval_builtin.json").read_text())
    assert info["random_weights"] is True and info["head"] == head
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AUTO[head].from_pretrained(path).eval()
    assert model.config.num_labels == n_labels
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(tokenizer)
    if labels is not None:
        assert [model.config.id2label[i] for i in range(n_labels)] == labels
        assert model.config.label2id == {label: i for i, label in enumerate(labels)}
    batch = tokenizer(["Who designed the bridge?"], ["Miriam Voss designed it."], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    seq_len = batch["input_ids"].shape[1]
    if head == "AutoModelForQuestionAnswering":
        assert out.start_logits.shape == out.end_logits.shape == (1, seq_len)
    elif head == "AutoModelForSequenceClassification":
        assert out.logits.shape == (1, n_labels)
    else:
        assert out.logits.shape == (1, seq_len, n_labels)
    assert not [p for p in tmp_path.rglob("*.tmp")], "no temporary build directory is left behind"


def test_builds_are_deterministic(tmp_path: Path) -> None:
    a = ensure_builtin_model(NAME, "AutoModelForTokenClassification", NER_LABELS, cache_dir=tmp_path / "a")
    b = ensure_builtin_model(NAME, "AutoModelForTokenClassification", NER_LABELS, cache_dir=tmp_path / "b")
    assert a.name == b.name
    sa = AutoModelForTokenClassification.from_pretrained(a).state_dict()
    sb = AutoModelForTokenClassification.from_pretrained(b).state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_build_leaves_caller_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ensure_builtin_model(NAME, "AutoModelForQuestionAnswering", cache_dir=tmp_path)
    assert torch.equal(torch.rand(3), expected)


def test_cache_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_builtin_model(NAME, "AutoModelForQuestionAnswering", cache_dir=tmp_path)
    mtime = (first / "model.safetensors").stat().st_mtime_ns

    def no_rebuild(*args: Any) -> None:
        raise AssertionError("cache hit expected, but the model was rebuilt")

    monkeypatch.setattr(builtin, "_build", no_rebuild)
    second = ensure_builtin_model(NAME, "AutoModelForQuestionAnswering", cache_dir=tmp_path)
    assert second == first
    assert (second / "model.safetensors").stat().st_mtime_ns == mtime


def test_labels_are_part_of_the_cache_key(tmp_path: Path) -> None:
    a = ensure_builtin_model(NAME, "AutoModelForSequenceClassification", ["a", "b"], cache_dir=tmp_path)
    b = ensure_builtin_model(NAME, "AutoModelForSequenceClassification", ["b", "a"], cache_dir=tmp_path)
    assert a != b


def test_default_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CPUEVAL_CACHE", str(tmp_path / "env-cache"))
    path = ensure_builtin_model(NAME, "AutoModelForQuestionAnswering")
    assert path.parent == tmp_path / "env-cache" / "builtin"


def test_losing_the_rename_race_uses_the_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_build = builtin._build

    def build_then_get_beaten(target: Path, *args: Any) -> None:
        real_build(target, *args)
        # Another job publishes the same model while ours is being built.
        winner = tmp_path / "builtin" / target.name.split(".")[1]
        real_build(winner, *args)
        (winner / "winner").touch()

    monkeypatch.setattr(builtin, "_build", build_then_get_beaten)
    path = ensure_builtin_model(NAME, "AutoModelForQuestionAnswering", cache_dir=tmp_path)
    assert (path / "winner").exists()
    assert [p.name for p in (tmp_path / "builtin").iterdir()] == [path.name]


@pytest.mark.parametrize("damage", ["marker_removed", "weights_truncated"])
def test_a_partial_or_corrupt_build_is_reported_and_rebuilt(tmp_path: Path, damage: str, caplog) -> None:
    good = ensure_builtin_model(NAME, "AutoModelForQuestionAnswering", cache_dir=tmp_path)
    weights = good / "model.safetensors"
    intact = weights.read_bytes()
    if damage == "marker_removed":
        (good / "cpueval_builtin.json").unlink()
    else:
        weights.write_bytes(intact[: len(intact) // 2])
    with caplog.at_level("WARNING", logger="cpueval"):
        again = ensure_builtin_model(NAME, "AutoModelForQuestionAnswering", cache_dir=tmp_path)
    assert again == good and weights.read_bytes() == intact
    assert any(str(good) in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)


def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown builtin model 'builtin:huge-bert'.*builtin:tiny-bert"):
        ensure_builtin_model("builtin:huge-bert", "AutoModelForQuestionAnswering", cache_dir=tmp_path)


def test_unknown_head(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"head 'summarization' .* not a transformers AutoModelFor\* class name"):
        ensure_builtin_model(NAME, "summarization", cache_dir=tmp_path)


@pytest.mark.parametrize("head", ["AutoModelForSequenceClassification", "AutoModelForTokenClassification"])
@pytest.mark.parametrize("labels", [[]])
def test_missing_labels(tmp_path: Path, head: str, labels: list[str] | None) -> None:
    with pytest.raises(ValueError, match=f"head '{head}' needs labels"):
        ensure_builtin_model(NAME, head, labels=labels, cache_dir=tmp_path)


def test_bad_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unique"):
        ensure_builtin_model(NAME, "AutoModelForTokenClassification", ["O", "O"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="non-empty strings"):
        ensure_builtin_model(NAME, "AutoModelForTokenClassification", ["O", ""], cache_dir=tmp_path)
    assert not (tmp_path / "builtin").exists(), "nothing is built for a bad request"
