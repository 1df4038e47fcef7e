"""Deferred imports for a fast start: `--help`, `--cfg` and configuration errors answer in about a second
instead of after torch and datasets load (~5 s of imports). Plug-in modules import them at module level
but first use them when a job runs.

This leans on one private piece of the standard library, `importlib.util._LazyModule` (the module class
`importlib.util.LazyLoader` installs), written for CPython 3.11: on Python < 3.12 every later
`import torch` statement reads the module's `__spec__`, and a `_LazyModule` loads itself on that read,
which would undo the deferral. `_DeferredModule` answers `__spec__` without loading.
tests/test_lazy_imports.py fails if upstream renames the class or changes that behaviour."""

from __future__ import annotations

import importlib.util
import sys
from typing import Sequence

DEFERRED_IMPORTS = ("torch", "datasets")


class _DeferredModule(importlib.util._LazyModule):  # type: ignore[name-defined,misc]
    """importlib's lazy module, except that reading `__spec__` does not load it."""

    def __getattribute__(self, attr: str) -> object:
        if attr == "__spec__":
            return object.__getattribute__(self, "__dict__")["__spec__"]
        return super().__getattribute__(attr)


def defer_imports(names: Sequence[str] = DEFERRED_IMPORTS) -> None:
    """Import `names` lazily: each module loads on its first real attribute access."""
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            continue
        spec.loader = importlib.util.LazyLoader(spec.loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        module.__class__ = _DeferredModule


def is_loaded(name: str) -> bool:
    """Whether module `name` has really been executed (not just deferred)."""
    module = sys.modules.get(name)
    return module is not None and not isinstance(module, _DeferredModule)
