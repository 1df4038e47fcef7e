"""Text classification: label mapping, sentence pairs, truncation, metrics from hand-set logits,
prediction files, and the app end to end (builtin random model; minilm-sst2 when ../shared exists)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

from cpueval.assets.builtin import ensure_builtin_model
from cpueval.config import DataConfig
from cpueval.data import load_examples
from cpueval.errors import UserError
from inprocess import Outcome, run_cpueval
from cpueval.tasks.text_classification import TextClassification, TextClassificationConfig

DATA = Path(__file__).resolve().parent.parent / "data"
LABELS = {0: "negative", 1: "positive"}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = ensure_builtin_model("builtin:tiny-bert", "AutoModelForSequenceClassification", ["negative", "positive"],
                                cache_dir=tmp_path_factory.mktemp("m"))
    return AutoTokenizer.from_pretrained(path)


def make_task(id2label=None, **overrides) -> TextClassification:
    task = TextClassification(TextClassificationConfig(**overrides))
    task.validate_config()
    task.set_labels(id2label or LABELS)
    return task


def rows(labels, texts=None, **columns) -> datasets.Dataset:
    texts = texts or [f"sentence number {i}" for i in range(len(labels))]
    return datasets.Dataset.from_dict({"text": texts, "label": labels, **columns})


# -- labels ------------------------------------------------------------------------------------
@pytest.mark.parametrize("labels", [[0, 1, 1], ["negative", "POSITIVE", "Positive"], ["0", "1", "1"]])
def test_int_and_string_labels_map_to_model_ids(labels):
    assert make_task().prepare_examples(rows(labels), "d.tsv")["label"] == [0, 1, 1]


def test_label_map_renames_data_labels_to_model_labels():
    task = make_task({0: "LABEL_0", 1: "LABEL_1"}, label_map={"neg": "LABEL_0", "pos": "label_1"})
    assert task.prepare_examples(rows(["pos", "neg"]), "d.tsv")["label"] == [1, 0]


def test_label_map_to_an_unknown_model_label_is_refused():
    with pytest.raises(UserError, match=r"task.label_map maps \{'pos': 'good'\}.*negative, positive"):
        make_task(label_map={"pos": "good"})


@pytest.mark.parametrize("value", [2, "neutral", -1])
def test_unknown_label_names_file_row_value_and_the_fix(value):
    with pytest.raises(UserError) as err:
        first = [0, 1] if isinstance(value, int) else ["negative", "positive"]
        make_task().prepare_examples(rows([*first, value]), "data/dev.tsv")
    message = str(err.value)
    assert f"data/dev.tsv row 3: label {value!r}" in message
    assert "negative, positive" in message and f"++task.label_map.{value}=" in message
    assert ("GLUE test splits" in message) == (value == -1)


def test_hub_class_label_names_are_used_when_the_model_knows_them():
    # SST-2's ClassLabel is (negative, positive); a model with the names reversed must get them by name
    data = rows([0, 1]).cast_column("label", datasets.ClassLabel(names=["negative", "positive"]))
    assert make_task({0: "positive", 1: "negative"}).prepare_examples(data, "hub")["label"] == [1, 0]


def test_hub_class_label_names_unknown_to_the_model_fall_back_to_ids():
    data = rows([0, 1]).cast_column("label", datasets.ClassLabel(names=["not_equivalent", "equivalent"]))
    assert make_task({0: "LABEL_0", 1: "LABEL_1"}).prepare_examples(data, "hub")["label"] == [0, 1]


def test_data_without_labels_cannot_be_scored():
    data = datasets.Dataset.from_dict({"text": ["a", "b"]})
    with pytest.raises(UserError, match=r"no 'label' column.*data.columns.label="):
        make_task().prepare_examples(data, "d.jsonl")


def test_missing_text_names_the_row():
    with pytest.raises(UserError, match=r"d.csv row 2: column 'text' holds None"):
        make_task().prepare_examples(rows([0, 1], texts=["fine", None]), "d.csv")


def test_ids_are_added_when_the_data_has_none():
    assert make_task().prepare_examples(rows([0, 1]), "d")["id"] == ["0", "1"]


# -- files and columns --------------------------------------------------------------------------
def test_mrpc_tsv_with_byte_order_mark_loads_with_the_mrpc_columns():
    config = DataConfig(path=str(DATA / "mrpc_tiny.tsv"), format="tsv",
                        columns={"text": "#1 String", "text_pair": "#2 String", "label": "Quality"})
    examples, _ = load_examples(config)
    assert {"text", "text_pair", "label"} <= set(examples.column_names)
    assert examples["label"] == [1, 0, 1, 0]
    assert '"NA"' in examples["text"][2]  # quotes kept (QUOTE_NONE), NA is text


def test_sst2_tsv_reads_the_word_null_as_text():
    examples, _ = load_examples(DataConfig(path=str(DATA / "sst2_tiny.tsv"), columns={"text": "sentence"}))
    assert examples["text"][-1] == "null"


# -- pre-processing -----------------------------------------------------------------------------
def test_sentence_pairs_reach_the_model_as_pairs(tokenizer):
    task = make_task()
    data = task.prepare_examples(rows([1], texts=["the river runs"], text_pair=["past the old mill"]), "d")
    feature = task.tokenize(data, tokenizer)[0]
    types = feature["token_type_ids"]
    assert 0 in types and 1 in types and types == sorted(types)  # first segment 0s, then second segment 1s
    first = [t for t, s in zip(feature["input_ids"], types) if s == 0]
    second = [t for t, s in zip(feature["input_ids"], types) if s == 1]
    assert tokenizer.decode(first, skip_special_tokens=True) == "the river runs"
    assert tokenizer.decode(second, skip_special_tokens=True) == "past the old mill"


def test_truncated_examples_are_counted(tokenizer):
    task = make_task(max_seq_length=8)
    lengths = {"short one": False, "one two three four five six": False, "one two three four five six seven": True,
               " ".join(["word"] * 30): True}
    # [CLS] + 6 words + [SEP] fills exactly 8 tokens without losing any: not truncated
    assert len(tokenizer("one two three four five six")["input_ids"]) == 8
    data = task.prepare_examples(rows([0] * len(lengths), texts=list(lengths)), "d")
    features = task.tokenize(data, tokenizer)
    assert features["truncated"] == list(lengths.values())
    assert all(len(ids) <= 8 for ids in features["input_ids"])
    assert task.task_stats(data, features)["truncated_examples"] == 2


def test_pad_to_max_length_still_counts_truncation_right(tokenizer):
    task = make_task(max_seq_length=8, pad_to_max_length=True)
    data = task.prepare_examples(rows([0, 1], texts=["short", " ".join(["word"] * 30)]), "d")
    features = task.tokenize(data, tokenizer)
    assert [len(ids) for ids in features["input_ids"]] == [8, 8]
    assert features["truncated"] == [False, True]


# -- post-processing and metrics ------------------------------------------------------------------
def scored(task: TextClassification, tokenizer, gold: list[int], logits: list[list[float]]):
    data = task.prepare_examples(rows(gold), "d")
    features = task.tokenize(data, tokenizer)
    outputs = [{"logits": np.array(row, dtype=np.float32)} for row in logits]
    return data, task.postprocess(data, features, outputs)


def test_binary_metrics_on_hand_set_logits(tokenizer):
    task = make_task()
    # gold 1 0 1 0, predicted 1 1 1 0: TP 2, FP 1, TN 1, FN 0
    data, predictions = scored(task, tokenizer, [1, 0, 1, 0], [[0, 2], [0, 1], [1, 3], [2, 0]])
    assert predictions.by_example == {"0": "positive", "1": "positive", "2": "positive", "3": "negative"}
    assert predictions.extra["scores"]["0"] == pytest.approx(1 / (1 + math.exp(-2)))
    metrics = task.compute_metrics(data, predictions)
    assert metrics["accuracy"] == pytest.approx(75.0)
    assert metrics["f1"] == pytest.approx(80.0)  # precision 2/3, recall 1
    assert metrics["macro_f1"] == pytest.approx((200 / 3 + 80.0) / 2)  # negative: precision 1, recall 1/2
    assert metrics["matthews_correlation"] == pytest.approx(2 / math.sqrt(12))


def test_three_classes_report_accuracy_and_macro_f1_only(tokenizer):
    task = make_task({0: "entailment", 1: "neutral", 2: "contradiction"})
    data, predictions = scored(task, tokenizer, [0, 1, 2], [[3, 0, 0], [0, 3, 0], [0, 3, 0]])
    metrics = task.compute_metrics(data, predictions)
    assert set(metrics) == {"accuracy", "macro_f1"}
    assert metrics["accuracy"] == pytest.approx(200 / 3)
    assert metrics["macro_f1"] == pytest.approx((100 + 200 / 3 + 0) / 3)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_prediction_files(tokenizer, tmp_path, fmt):
    task = make_task(predictions_format=fmt)
    data, predictions = scored(task, tokenizer, [1, 0], [[0, 2], [0, 1]])
    (path,) = task.write_predictions(data, predictions, tmp_path)
    assert path.name == f"predictions.{fmt}"
    if fmt == "jsonl":
        lines = [json.loads(line) for line in path.read_text().splitlines()]
    else:
        import csv

        lines = list(csv.DictReader(path.open()))
    assert [(r["id"], r["prediction"], r["label"]) for r in lines] == [("0", "positive", "positive"),
                                                                       ("1", "positive", "negative")]
    assert float(lines[1]["score"]) == pytest.approx(1 / (1 + math.exp(-1)))
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temp files left


# -- the app ---------------------------------------------------------------------------------------
def cpueval(*args: str, **env: str) -> Outcome:
    return run_cpueval(["runtime.progress=false", *args], env={"HYDRA_FULL_ERROR": None, **env})


def read_run(run_dir: Path) -> tuple[dict, dict]:
    return json.loads((run_dir / "results.json").read_text()), json.loads((run_dir / "eval_results.json").read_text())


def test_app_sst2_tsv_end_to_end(tmp_path):
    result = cpueval("task=text_classification", "data=sst2_dev", f"data.path={DATA / 'sst2_tiny.tsv'}",
                     "task.max_seq_length=8", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    record, hf = read_run(tmp_path)
    assert record["status"] == "ok" and record["headline_metrics"] == ["accuracy"]
    assert set(record["metrics"]) == {"accuracy", "macro_f1", "f1", "matthews_correlation"}
    assert record["task_stats"]["truncated_examples"] == 4  # all but "null" have > 6 pieces in the builtin vocab
    assert hf["eval_accuracy"] == record["metrics"]["accuracy"] and hf["eval_examples"] == 5
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in lines] == ["0", "1", "2", "3", "4"]
    assert all(r["prediction"] in ("negative", "positive") and 0.5 <= r["score"] <= 1 for r in lines)


def test_app_mrpc_pairs_end_to_end_with_csv_predictions(tmp_path):
    result = cpueval("task=text_classification", "data=mrpc_tsv", f"data.path={DATA / 'mrpc_tiny.tsv'}",
                     "task.predictions_format=csv", f"hydra.run.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    record, _ = read_run(tmp_path)
    assert record["status"] == "ok" and record["data"]["num_examples"] == 4
    assert (tmp_path / "predictions.csv").read_text().splitlines()[0] == "id,prediction,score,label"


def test_app_unknown_label_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\ngood film\tpositive\nso so\tmixed\n")
    result = cpueval("task=text_classification", "data=sst2_dev", f"data.path={bad}", f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode == 2
    assert f"{bad} row 2: label 'mixed' is not a label of the model" in result.stderr
    assert json.loads((tmp_path / "r" / "results.json").read_text())["status"] == "failed"


@pytest.mark.shared
@pytest.mark.slow
def test_minilm_sst2_reaches_its_dev_accuracy(shared_dir, tmp_path):
    """minilm-sst2 scored 89.1 on SST-2 dev after training (bf16 autocast); fp32 here must land close."""
    result = cpueval("experiment=sst2_minilm", f"hydra.run.dir={tmp_path}", CPUEVAL_SHARED=str(shared_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    record, _ = read_run(tmp_path)
    assert record["data"]["num_examples"] == 872
    assert abs(record["metrics"]["accuracy"] - 89.1) <= 0.5
