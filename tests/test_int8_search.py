"""precision.accuracy_target: the int8 search (cpueval/int8_search.py) on the builtin tiny model.

The tiny model's weights are random, so its F1 on the sample means nothing. To give the search a metric
that int8 can lose, the data are relabelled with the fp32 model's own predictions: fp32 scores F1 100
on them, and every prediction int8 changes costs F1. And one layer is made to break under int8, as
outlier weights do in real models: qa_outputs gets a weight of 100 on a hidden feature that is always 0
(its LayerNorm gain and bias are 0). fp32 ignores it; int8's per-row scale (100/127) rounds every other
weight of qa_outputs to 0. Runs are in-process through Hydra's compose API."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from cpueval import int8_search
from inprocess import compose_config
from cpueval.errors import UserError
from cpueval.pipeline import execute
from cpueval.precisions import create_precision

SAMPLE = Path(__file__).resolve().parent.parent / "cpueval" / "assets" / "sample_squad.json"
FAST = ["runtime.progress=false", "runtime.warmup_batches=0", "runtime.batch_size=4"]
# 20 scored, 5 calibrate, the next 20 validate: the sample's 45 questions, none twice.
SEARCH = ["precision=int8", "precision.accuracy_target=0.99",
          "data.max_eval_samples=20", "precision.calibration.samples=5", "precision.search.validation.samples=20"]


def run(run_dir: Path, *overrides: str):
    return execute(compose_config([*FAST, *overrides]), run_dir)


@pytest.fixture(scope="module")
def fragile_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The builtin tiny QA model with qa_outputs made to break under int8 (see the module docstring)."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from cpueval.assets.builtin import ensure_builtin_model

    source = ensure_builtin_model("builtin:tiny-bert", "AutoModelForQuestionAnswering")
    model = AutoModelForQuestionAnswering.from_pretrained(source).eval()
    with torch.no_grad():
        final_norm = model.bert.encoder.layer[-1].output.LayerNorm
        final_norm.weight[0], final_norm.bias[0] = 0.0, 0.0
        model.qa_outputs.weight[:, 0] = 100.0
    target = tmp_path_factory.mktemp("model") / "fragile"
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def self_labelled(fragile_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample with each question's answer replaced by the fp32 model's prediction."""
    tmp = tmp_path_factory.mktemp("labels")
    run(tmp / "fp32", f"model.name_or_path={fragile_model}")
    predicted = json.loads((tmp / "fp32" / "predictions.json").read_text())
    data = json.loads(SAMPLE.read_text())
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                text = predicted[qa["id"]]
                qa["answers"] = [{"text": text, "answer_start": max(0, paragraph["context"].find(text))}]
    path = tmp / "labelled.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def job(fragile_model: Path, self_labelled: Path) -> list[str]:
    return [f"model.name_or_path={fragile_model}", f"data.path={self_labelled}", *SEARCH]


@pytest.fixture(scope="module")
def searched(job: list[str], tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("search")
    cache = tmp / "cache"
    first = run(tmp / "first", f"runtime.cache_dir={cache}", *job)
    second = run(tmp / "second", f"runtime.cache_dir={cache}", *job)
    return tmp, first, second


def sample_ids() -> list[str]:
    data = json.loads(SAMPLE.read_text())["data"]
    return [qa["id"] for article in data for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def test_validation_and_calibration_never_overlap_the_scored_examples(searched) -> None:
    tmp, first, _ = searched
    scored = set(json.loads((tmp / "first" / "predictions.json").read_text()))
    assert scored == set(sample_ids()[:20]) and first.data.num_examples == 20
    assert first.data.calibration.ids == sample_ids()[20:25]
    validation = first.int8_search.validation
    assert validation.ids == sample_ids()[25:45] and validation.source == "unscored"
    assert not validation.overlaps_scored and not validation.left_out_of_scoring


def test_the_search_meets_the_target_with_the_fewest_fp32_layers_it_tried(searched) -> None:
    _, first, _ = searched
    found = first.int8_search
    assert found.met_target and found.reference_metric == 100.0 and found.metric == "f1"
    steps = {step.kept: step for step in found.steps}
    assert len(steps) == found.evaluations == len(found.steps) <= 12
    assert steps[0].ratio < 0.99 and not steps[0].passed  # all-int8 loses the target: layers must stay fp32
    kept = len(found.fp32_layers)
    assert kept >= 1 and steps[kept].passed and steps[kept].ratio >= 0.99
    assert kept - 1 in steps and not steps[kept - 1].passed  # one fewer was tried and failed: it stopped there
    assert all(step.ratio == pytest.approx(step.metric / 100.0) for step in found.steps)
    ranked = [layer for layer, _ in found.ranking]
    assert found.fp32_layers == ranked[:kept] and ranked[0] == "qa_outputs"  # the most sensitive ones
    errors = [error for _, error in found.ranking]
    assert errors == sorted(errors, reverse=True) and len(ranked) == 13  # 2 layers x 6 Linear + qa_outputs
    details = first.actual.precision_details
    assert sorted(details["fp32_linear"]) == sorted(found.fp32_layers)
    assert details["quantized_linear"] == 13 - kept
    assert found.cache == "miss" and first.timing.int8_search > 0


def test_a_second_run_hits_the_cache(searched) -> None:
    _, first, second = searched
    assert second.int8_search.cache == "hit" and second.int8_search.cache_key == first.int8_search.cache_key
    assert second.int8_search.fp32_layers == first.int8_search.fp32_layers
    assert second.int8_search.steps == first.int8_search.steps
    assert second.metrics == first.metrics


def test_the_saved_overrides_rebuild_the_same_model(searched, job: list[str]) -> None:
    tmp, first, _ = searched
    saved = yaml.safe_load((tmp / "first" / int8_search.RESULT_FILE).read_text())
    assert saved["precision"]["skip_modules"] == first.int8_search.fp32_layers
    assert " ".join(f"'{o}'" for o in saved["overrides"]) == first.int8_search.overrides
    again = run(tmp / "again", *job, *saved["overrides"])
    assert again.int8_search is None and again.metrics == first.metrics
    assert (tmp / "again" / "predictions.json").read_text() == (tmp / "first" / "predictions.json").read_text()


@pytest.mark.slow
def test_onnxruntime_int8_searches_through_excluded_nodes(job: list[str], searched, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    _, eager, _ = searched
    record = run(tmp_path / "run", "mode=onnxruntime", f"runtime.cache_dir={tmp_path / 'cache'}", *job,
                 "precision.search.ranking_batches=1")
    found = record.int8_search
    assert found.met_target and found.fp32_layers[0] == "qa_outputs" and found.steps[0].ratio < 0.99
    details = record.actual.precision_details
    assert sorted(details["fp32_linear"]) == sorted(found.fp32_layers) and details["nodes_excluded"]
    assert found.cache == "miss" and found.cache_key != eager.int8_search.cache_key  # its own search, not eager's
    assert found.reference_metric == 100.0  # ONNX Runtime fp32 predicts as eager fp32 did


@pytest.mark.slow
def test_openvino_int8_searches_through_nncf_ignored_scope(job: list[str], tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    record = run(tmp_path / "run", "mode=openvino", f"runtime.cache_dir={tmp_path / 'cache'}", *job,
                 "precision.search.ranking_batches=1")
    found = record.int8_search
    assert found.fp32_layers[0] == "qa_outputs" and found.steps[0].ratio < 0.99 and found.met_target
    details = record.actual.precision_details
    assert sorted(details["fp32_linear"]) == sorted(found.fp32_layers)
    assert any(node.startswith("__module.qa_outputs/") for node in details["nodes_excluded"])


def test_the_search_and_the_overrides_quantize_identically() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x):
            return {"logits": self.net(x)}

    wrapped = Wrapped().eval()
    layers = create_precision("int8", accuracy_target=0.99).layer_quantizer(wrapped)
    assert layers.candidates() == ["net.0", "net.2"]
    x = {"x": torch.randn(3, 16)}
    from_search = layers.quantize(["net.2"])(x)["logits"]
    rebuilt = create_precision("int8", skip_modules=["net.2"]).convert(copy.deepcopy(wrapped))
    with torch.inference_mode():
        assert torch.equal(from_search, rebuilt(**x)["logits"])
    assert type(wrapped.net[0]) is torch.nn.Linear  # the search quantized copies


class FakeLayers:
    """Metric 100 only when layers a and b stay fp32; 90 when one of them does; 80 otherwise."""

    def candidates(self) -> list[str]:
        return ["a", "b", "c", "d", "e"]

    def quantize(self, fp32_layers):
        score = 80.0 + 10.0 * len({"a", "b"} & set(fp32_layers))
        return lambda inputs: {"score": torch.tensor([score])}

    def identity(self) -> dict:
        return {}


def evaluate(forward) -> int8_search.Evaluation:
    return int8_search.Evaluation(metric=float(forward({})["score"]), forward_seconds=1.0)


def test_doubling_then_bisection_finds_the_smallest_passing_count() -> None:
    ranking = [("b", 0.5), ("a", 0.4), ("c", 0.1), ("d", 0.0), ("e", 0.0)]
    result = int8_search.search(FakeLayers(), ranking, evaluate, int8_search.Evaluation(100.0, 1.0), 0.99,
                                int8_search.Budget(max_evaluations=10, max_seconds=60))
    assert [s.kept for s in result.steps] == [0, 1, 2]  # 0 fails, 1 fails, 2 passes: nothing between
    assert result.fp32_layers == ["b", "a"] and result.met_target
    ranking = [("c", 0.5), ("a", 0.4), ("d", 0.3), ("b", 0.2), ("e", 0.1)]
    result = int8_search.search(FakeLayers(), ranking, evaluate, int8_search.Evaluation(100.0, 1.0), 0.99,
                                int8_search.Budget(max_evaluations=10, max_seconds=60))
    assert [s.kept for s in result.steps] == [0, 1, 2, 4, 3]  # 2 fails, 4 passes, then 3 (between) fails
    assert result.fp32_layers == ["c", "a", "d", "b"] and result.stopped.startswith("target met")


def test_the_budget_stops_the_search_and_says_so() -> None:
    ranking = [("c", 0.5), ("a", 0.4), ("d", 0.3), ("b", 0.2), ("e", 0.1)]
    result = int8_search.search(FakeLayers(), ranking, evaluate, int8_search.Evaluation(100.0, 1.0), 0.99,
                                int8_search.Budget(max_evaluations=3, max_seconds=60))
    assert result.evaluations == 3 and not result.met_target and result.stopped == "max_evaluations=3 reached"
    assert result.fp32_layers == ["c", "a"]  # the most accurate tried (90: a kept)


@pytest.mark.parametrize("overrides, message", [
    (("precision.accuracy_target=1.5",), r"^precision.accuracy_target=1.5 must be in \(0, 1\]"),
    (("precision.search.validation.samples=30",),
     r"^precision.search.validation.samples=30: only 20 examples of the data are not scored \(nor calibrate\)"),
])
def test_bad_search_settings_fail_in_one_line(tmp_path: Path, overrides, message) -> None:
    with pytest.raises(UserError, match=message):
        run(tmp_path / "run", "precision=int8", "precision.accuracy_target=0.99", "data.max_eval_samples=20",
            "precision.calibration.samples=5", *overrides)
