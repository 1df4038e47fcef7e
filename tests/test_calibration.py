"""Calibration data for static quantization (cpueval/calibration.py through the pipeline): the examples
that calibrate are recorded, never among the scored ones unless asked (and then the record says so),
reach the mode as batches of the task's own features, and bad settings fail in one line.

A mode that needs calibration is simulated by making eager ask for it with int8, in-process through
Hydra's compose API (a subprocess would prove nothing more)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inprocess import compose_config
from cpueval.errors import UserError
from cpueval.modes.eager import EagerMode
from cpueval.pipeline import execute

SAMPLE = Path(__file__).resolve().parent.parent / "cpueval" / "assets" / "sample_squad.json"
FAST = ["runtime.progress=false", "runtime.warmup_batches=0", "precision=int8", "runtime.batch_size=4"]


@pytest.fixture
def calibrated_eager(monkeypatch: pytest.MonkeyPatch) -> list:
    """Eager asks for calibration under int8; returns the calibration batches each prepare received."""
    received: list = []
    build = EagerMode.build

    def build_and_capture(self, model, precision, ctx):
        received.append(ctx.calibration)
        return build(self, model, precision, ctx)

    monkeypatch.setattr(EagerMode, "needs_calibration", lambda self, precision: precision.name == "int8")
    monkeypatch.setattr(EagerMode, "build", build_and_capture)
    return received


def run(tmp_path: Path, *overrides: str):
    return execute(compose_config([*FAST, *overrides]), tmp_path / "run")


def scored_ids(tmp_path: Path) -> set[str]:
    return set(json.loads((tmp_path / "run" / "predictions.json").read_text()))


def sample_ids() -> list[str]:
    data = json.loads(SAMPLE.read_text())["data"]
    return [qa["id"] for article in data for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def test_unscored_examples_calibrate_and_the_scored_set_stays(tmp_path: Path, calibrated_eager: list) -> None:
    record = run(tmp_path, "data.max_eval_samples=20", "precision.calibration.samples=10")
    info = record.data.calibration
    assert info.source == "unscored" and info.examples == 10 and not info.left_out_of_scoring
    assert info.ids == sample_ids()[20:30]  # the ten after the scored twenty
    assert scored_ids(tmp_path) == set(sample_ids()[:20]) and record.data.num_examples == 20
    (batches,) = calibrated_eager
    assert sum(len(b["input_ids"]) for b in batches) >= 10  # windows of the ten questions, in batches of <= 4
    assert all(len(b["input_ids"]) <= 4 for b in batches)
    assert record.timing.calibration > 0


def test_held_out_examples_leave_the_scored_set_and_the_record_says_so(tmp_path: Path, calibrated_eager) -> None:
    record = run(tmp_path, "data.max_eval_samples=20", "precision.calibration.samples=5",
                 "precision.calibration.source=held_out")
    assert record.data.calibration.ids == sample_ids()[:5] and record.data.calibration.left_out_of_scoring
    assert scored_ids(tmp_path) == set(sample_ids()[5:20]) and record.data.num_examples == 15
    assert any("left out of scoring" in w for w in record.warnings)


def test_a_calibration_file_of_its_own(tmp_path: Path, calibrated_eager) -> None:
    record = run(tmp_path, "data.max_eval_samples=20", "precision.calibration.samples=3",
                 "precision.calibration.source=path", f"precision.calibration.path={SAMPLE}")
    assert record.data.calibration.ids == sample_ids()[:3] and record.data.calibration.source == "path"
    assert scored_ids(tmp_path) == set(sample_ids()[:20])  # overlap with a file of its own is the user's choice


@pytest.mark.parametrize("overrides, message", [
    (("precision.calibration.samples=30",), r"^precision.calibration.samples=30: only 25 examples of the data are not scored"),
    (("precision.calibration.samples=0",), r"^precision.calibration.samples=0 must be > 0"),
    (("precision.calibration.source=path",), r"^precision.calibration.source=path needs precision.calibration.path="),
])
def test_bad_calibration_settings_fail_in_one_line(tmp_path: Path, calibrated_eager, overrides, message) -> None:
    with pytest.raises(UserError, match=message):
        run(tmp_path, "data.max_eval_samples=20", *overrides)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "failed"
    assert calibrated_eager == []  # failed before preparing the mode


def test_no_calibration_unless_needed(tmp_path: Path) -> None:
    record = run(tmp_path, "data.max_eval_samples=8")
    assert record.data.calibration is None and record.timing.calibration is None
