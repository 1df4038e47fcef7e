import json
import os

import numpy as np
import pytest

from cpueval.records import read_results, write_json_atomic


def test_write_json_atomic_converts_numpy_and_nan(tmp_path):
    path = write_json_atomic(tmp_path / "r.json", {"a": np.float32(1.5), "b": np.arange(3), "c": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": None}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


def test_a_failed_write_keeps_the_previous_complete_file(tmp_path, monkeypatch):
    path = write_json_atomic(tmp_path / "results.json", {"status": "ok"})

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_json_atomic(path, {"status": "running", "big": list(range(1000))})
    assert read_results(tmp_path) == {"status": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_read_results_of_missing_or_truncated_file_is_none(tmp_path):
    assert read_results(tmp_path) is None
    (tmp_path / "results.json").write_text('{"status": "o')
    assert read_results(tmp_path) is None


def test_the_committed_schema_is_the_one_the_dataclasses_generate():
    from cpueval import records

    committed = json.loads(records.SCHEMA_FILE.read_text())
    assert committed == json.loads(json.dumps(records.json_schema())), (
        "regenerate: python -m cpueval.records > cpueval/schema/results.schema.json")


def test_a_record_round_trips_through_json_and_the_schema(tmp_path):
    import jsonschema

    from cpueval import records

    record = records.RunRecord(status="failed", started_at="2026-01-01T00:00:00+00:00", config_hash="abcd1234",
                               config={"mode": {"name": "eager"}}, requested=records.Requested("eager", "fp32"),
                               run_dir=str(tmp_path), error=records.ErrorInfo("UserError", "bad value"))
    records.save(record)
    data = json.loads((tmp_path / "results.json").read_text())
    jsonschema.validate(data, json.loads(records.SCHEMA_FILE.read_text()))
    assert records.read_record(tmp_path) == record and record.reason == "UserError: bad value"
    data["status"] = "finished"  # not a status: the schema and the loader both refuse it
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, json.loads(records.SCHEMA_FILE.read_text()))
    (tmp_path / "results.json").write_text(json.dumps(data))
    assert records.read_record(tmp_path) is None
    (tmp_path / "results.json").unlink()  # invalid on purpose: kept out of the session-wide schema check
