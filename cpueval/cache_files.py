"""Verified cache entries: a directory whose manifest lists the sha256 of every file it holds.

The feature cache (cpueval/pipeline.py) and the builtin models (cpueval/assets/builtin.py) are
reused across runs; a truncated or edited entry would otherwise fail deep inside datasets or
transformers (or, worse, load). An entry is used only when its manifest matches; otherwise it is
reported with its path and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

MANIFEST_KEY = "files"


def file_digests(directory: Path, leave_out: tuple[str, ...] = ()) -> dict[str, str]:
    """Relative path -> sha256 of every file under `directory` (except `leave_out` names)."""
    digests = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name not in leave_out):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digests[str(path.relative_to(directory))] = digest.hexdigest()
    return digests


def write_manifest(directory: Path, manifest_name: str, extra: Optional[dict] = None) -> None:
    """Written last: its presence marks a complete entry, its digests a sound one."""
    content = {**(extra or {}), MANIFEST_KEY: file_digests(directory, leave_out=(manifest_name,))}
    (directory / manifest_name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def problem(directory: Path, manifest_name: str) -> Optional[str]:
    """Why the entry at `directory` cannot be used (missing or unreadable manifest, a file missing or
    changed), or None when it is sound."""
    try:
        listed = json.loads((directory / manifest_name).read_text(encoding="utf-8"))[MANIFEST_KEY]
    except FileNotFoundError:
        return f"no {manifest_name} (an interrupted or older build)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{manifest_name} unreadable ({type(err).__name__})"
    found = file_digests(directory, leave_out=(manifest_name,))
    for name, digest in listed.items():
        if name not in found:
            return f"{name} missing"
        if found[name] != digest:
            return f"{name} changed since it was written (checksum differs)"
    return None


def discard(directory: Path) -> None:
    """Move a bad entry aside atomically (a concurrent reader never sees half of it), then delete it."""
    aside = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".bad", dir=directory.parent))
    try:
        os.rename(directory, aside / directory.name)
    except OSError:
        pass  # another job discarded it first
    shutil.rmtree(aside, ignore_errors=True)
