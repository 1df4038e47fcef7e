"""Files a run writes. Every write is atomic (temp file in the same directory + rename), so a
killed job leaves either the previous complete file or the new complete file, never half of one."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np

RESULTS_FILE = "results.json"
SCHEMA_VERSION = 1


def _jsonable(value: Any) -> Any:
    """numpy scalars/arrays and paths -> plain JSON; NaN/inf -> None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_text_atomic(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; results are for everyone who reads the sweep
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(_jsonable(obj), indent=indent, ensure_ascii=False) + "\n")


def write_lines_atomic(path: Path, lines: Iterable[str]) -> Path:
    return write_text_atomic(path, "".join(f"{line}\n" for line in lines))


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's results.json, or None if absent or unreadable."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
