"""cpueval.lazy_imports leans on importlib's private `_LazyModule` (CPython 3.11): these fail when
upstream renames it or an `import` statement starts loading a deferred module again."""

from __future__ import annotations

import subprocess
import sys



def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_an_import_statement_does_not_load_a_deferred_module() -> None:
    result = run("""
import sys
from cpueval.lazy_imports import defer_imports, is_loaded
defer_imports(['fractions'])
import fractions
import fractions as again
print(is_loaded('fractions'), type(sys.modules['fractions']).__name__)
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "_DeferredModule"]


def test_first_use_loads_it_and_it_works() -> None:
    result = run("""
from cpueval.lazy_imports import defer_imports, is_loaded
defer_imports(['fractions'])
import fractions
half = fractions.Fraction(1, 2)
print(is_loaded('fractions'), half + half == 1)
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_why_the_patch_exists_importlibs_own_lazy_module_loads_on_import() -> None:
    """If this fails, importlib's LazyLoader no longer loads on an import statement (as on Python >= 3.12)
    and cpueval.lazy_imports can use it as is."""
    result = run("""
import importlib.util, sys
spec = importlib.util.find_spec('fractions')
spec.loader = importlib.util.LazyLoader(spec.loader)
module = importlib.util.module_from_spec(spec)
sys.modules['fractions'] = module
spec.loader.exec_module(module)
import fractions
print(type(sys.modules['fractions']).__name__)
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["module"]  # loaded by the import statement alone
