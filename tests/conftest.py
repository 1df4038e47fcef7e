"""Shared fixtures. Tests that need ../shared (real models, SQuAD dev) use `shared_dir` and skip
with the reason when it is absent; CI always has it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))  # test-only helpers (cpueval_faults)
SHARED = Path(os.environ.get("CPUEVAL_SHARED", PROJECT_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "models").is_dir():
        pytest.skip(f"needs the shared models and data at {SHARED} (absent on a fresh clone; CI has them)")
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def _every_record_matches_the_committed_schema(tmp_path_factory: pytest.TempPathFactory):
    """After the session: every results.json cpueval wrote under the tests' temp dirs (schema version 2;
    hand-made inputs of older versions or broken on purpose are left out) validates against the
    committed JSON Schema, cpueval/schema/results.schema.json."""
    yield
    import json

    import jsonschema

    from cpueval.records import RESULTS_FILE, SCHEMA_FILE, SCHEMA_VERSION

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    for path in tmp_path_factory.getbasetemp().rglob(RESULTS_FILE):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("schema_version") == SCHEMA_VERSION:
            errors = sorted(validator.iter_errors(data), key=str)
            assert not errors, f"{path} does not match {SCHEMA_FILE.name}: {errors[0].message} at {list(errors[0].path)}"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Builtin models and feature caches go to a per-session temp dir, never to ~/.cache."""
    monkeypatch.setenv("CPUEVAL_CACHE", str(tmp_path_factory.getbasetemp() / "cpueval-cache"))
