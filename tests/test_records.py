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
