"""What the runtime modes (ONNX Runtime, OpenVINO) share: a content-keyed, atomically written cache
of exported/converted models, input/output conversion between torch and numpy, and reading the int8
precision's settings.

Cache entries are directories `<cache_dir>/<kind>/<key>/`. An entry is built in a temporary sibling
directory and renamed into place in one step, so a sweep builds it once and a concurrent job never
sees half a file (a job that loses the race discards its own copy and uses the winner's). Without a
cache dir (runtime.cache_dir=null, or the mode tests) entries go to a temporary directory that is
removed once the runtime has loaded the model.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from cpueval.errors import UserError

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when an entry's layout changes
META_FILE = "cpueval-cache.json"


# -- keys ---------------------------------------------------------------------------------------------
def content_key(material: Mapping[str, Any]) -> str:
    """Short sha256 of the JSON of `material` (everything the cached file depends on)."""
    text = json.dumps({"format": CACHE_FORMAT, **material}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def model_identity(model: torch.nn.Module, weights_sha256: Optional[str]) -> dict[str, str]:
    """What identifies the model's graph and weights. The weights hash (from the model files) says
    nothing about the class or config (heads, attention implementation), so those are added; a model
    without a weights hash (built in memory) is hashed from its state dict."""
    config = getattr(model, "config", None)
    settings = config.to_dict() if hasattr(config, "to_dict") else {"repr": repr(config)}
    settings.pop("_name_or_path", None)  # where it was loaded from: the same model by another path is the same
    config_text = json.dumps(settings, sort_keys=True, default=str)
    return {
        "weights": weights_sha256 or tensors_digest([model.state_dict()]),
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": hashlib.sha256(config_text.encode()).hexdigest(),
    }


def tensors_digest(batches: Iterable[Mapping[str, torch.Tensor]]) -> str:
    """sha256 over names, shapes, dtypes and bytes of every tensor (e.g. calibration batches)."""
    digest = hashlib.sha256()
    for batch in batches:
        for name in sorted(batch):
            tensor = batch[name].detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def files_sha256(paths: Sequence[Path]) -> str:
    """sha256 over the files' names and contents, in name order."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# -- entries ------------------------------------------------------------------------------------------
@dataclass
class CacheEntry:
    path: Path  # the entry's directory
    hit: bool  # found complete in the cache (nothing was built)
    seconds: float  # build time (0 on a hit)
    temporary: bool = False  # not cached: remove with cleanup() once loaded

    @property
    def sha256(self) -> str:
        """sha256 of the files the build wrote (computed once, when it was built)."""
        return json.loads((self.path / META_FILE).read_text())["files_sha256"]

    def cleanup(self) -> None:
        if self.temporary:
            shutil.rmtree(self.path, ignore_errors=True)

    def describe(self) -> str:
        return "hit" if self.hit else ("disabled" if self.temporary else "miss")

    def details(self) -> dict[str, Any]:
        """For actual.details: cache hit/miss, build seconds, where it lies, sha256 of its files."""
        return {"cache": self.describe(), "seconds": round(self.seconds, 3),
                "dir": None if self.temporary else str(self.path), "sha256": self.sha256}


def cached_entry(root: Optional[Path], kind: str, material: Mapping[str, Any],
                 build: Callable[[Path], None]) -> CacheEntry:
    """The entry for `material` under `root/kind`, built with `build(directory)` if absent."""
    key = content_key(material)
    if root is None:
        tmp = Path(tempfile.mkdtemp(prefix=f"cpueval-{kind}-{key}-"))
        return CacheEntry(tmp, hit=False, seconds=_timed_build(build, tmp, material), temporary=True)
    target = Path(root).expanduser() / kind / key
    if (target / META_FILE).exists():
        return CacheEntry(target, hit=True, seconds=0.0)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target.parent, key)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.{os.getpid()}@{socket.gethostname()}.", dir=target.parent))
    try:
        seconds = _timed_build(build, tmp, material)
        os.rename(tmp, target)  # atomic; fails if a concurrent job renamed its copy first
    except OSError:
        if not (target / META_FILE).exists():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # lost the race: the winner's entry is complete
        return CacheEntry(target, hit=True, seconds=0.0)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CacheEntry(target, hit=False, seconds=seconds)


def _remove_abandoned(parent: Path, key: str) -> None:
    """Temporary directories of builds whose process died without cleaning up (OOM kill, SIGKILL):
    `.<key>.<pid>@<host>.<random>` of this host whose pid no longer runs."""
    host = socket.gethostname()
    for path in parent.glob(f".{key}.*@*"):
        pid, _, rest = path.name[len(key) + 2:].partition("@")
        if pid.isdigit() and rest.rsplit(".", 1)[0] == host and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _timed_build(build: Callable[[Path], None], directory: Path, material: Mapping[str, Any]) -> float:
    start = time.perf_counter()
    try:
        build(directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    seconds = time.perf_counter() - start
    digest = files_sha256([p for p in directory.iterdir() if p.is_file()])
    # Written last: its presence marks a complete entry (and says what it was built from).
    meta = {**material, "files_sha256": digest}
    (directory / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    return seconds


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Exporters and quantizers print progress and warn about their own internals (optional packages,
    axis names, deprecations) that the user can do nothing about: keep those lines out of the job's
    output. Their stdout goes to the debug log; errors still raise."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    stdout = io.StringIO()
    try:
        for name in loggers:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(stdout):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        if stdout.getvalue().strip():
            log.debug("%s", stdout.getvalue().strip())


# -- inputs and outputs ----------------------------------------------------------------------------------
def output_names(model: torch.nn.Module, example: Mapping[str, torch.Tensor]) -> list[str]:
    """The tensor outputs of the torch model on `example`, in its order (start_logits, end_logits / logits)."""
    with torch.inference_mode():
        outputs = model(**example)
    return [name for name, value in outputs.items() if isinstance(value, torch.Tensor)]


def to_numpy_inputs(inputs: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The runtime's inputs (by its input names) as numpy arrays; a missing one is an error."""
    missing = [name for name in names if name not in inputs]
    if missing:
        raise KeyError(f"the exported model needs inputs {missing}; the batch has {sorted(inputs)}")
    return {name: inputs[name].detach().contiguous().numpy() for name in names}


def to_torch_outputs(arrays: Sequence[np.ndarray], names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The runtime's outputs, in `names` order, as float32 torch tensors by the torch model's names."""
    return {name: torch.from_numpy(np.asarray(array, dtype=np.float32)) for name, array in zip(names, arrays)}


# -- the int8 precision's settings ---------------------------------------------------------------------
def int8_settings(precision: Any) -> tuple[str, list[str]]:
    """(weights, skip_modules) of the int8 precision, read defensively (fields may change)."""
    config = precision.config
    weights = getattr(config, "weights", "per_channel")
    if weights not in ("per_channel", "per_tensor"):
        raise UserError(f"precision.weights={weights!r} is not one of per_channel, per_tensor")
    return weights, list(getattr(config, "skip_modules", []) or [])


def skipped_modules(linear_modules: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The Linear modules `precision.skip_modules` (fnmatch patterns) keep in fp32; a pattern matching
    none of them is an error, as for the PyTorch int8 backends."""
    names = list(dict.fromkeys(linear_modules))
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        example = names[-1] if names else "qa_outputs"
        raise UserError(f"precision.skip_modules: {unmatched} match no Linear layer of the model "
                        f"(fnmatch on qualified names, e.g. {example!r})")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
