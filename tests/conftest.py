"""Shared fixtures. Tests that need ../shared (real models, SQuAD dev) use `shared_dir` and skip
with the reason when it is absent; CI always has it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CPUEVAL_SHARED", PROJECT_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "models").is_dir():
        pytest.skip(f"needs the shared models and data at {SHARED} (absent on a fresh clone; CI has them)")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Builtin models and feature caches go to a per-session temp dir, never to ~/.cache."""
    monkeypatch.setenv("CPUEVAL_CACHE", str(tmp_path_factory.getbasetemp() / "cpueval-cache"))
