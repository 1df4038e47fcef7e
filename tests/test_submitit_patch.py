"""cpueval/submitit_patch.py wraps hydra-submitit-launcher's `launch`. These tests fail when upstream
changes what the wrapper relies on (so the wrapper is revisited, not silently broken), and check that
the wrapper submits only the jobs that are not done."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest

from cpueval import submitit_patch
from cpueval.environment import package_version

launcher_module = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.submitit_launcher")


def test_upstream_is_the_version_the_wrapper_was_written_for() -> None:
    assert package_version("hydra-submitit-launcher") == submitit_patch.TESTED_WITH, (
        "hydra-submitit-launcher changed: check BaseSubmititLauncher.launch against cpueval/submitit_patch.py, "
        "then update TESTED_WITH")


def test_upstream_launch_signature_and_attributes_are_what_the_wrapper_uses() -> None:
    launch = launcher_module.BaseSubmititLauncher.launch
    original = getattr(launch, "__wrapped_original__", launch)
    params = list(inspect.signature(original).parameters)
    assert params == ["self", "job_overrides", "initial_job_idx"]
    source = inspect.getsource(launcher_module.BaseSubmititLauncher)
    for used in ("self.config", "self.hydra_context", "def launch("):
        assert used in source, used


def test_only_jobs_that_are_not_done_are_submitted(monkeypatch: pytest.MonkeyPatch) -> None:
    submitted: list[list[list[str]]] = []

    def fake_original(self, job_overrides, initial_job_idx):
        submitted.append([list(o) for o in job_overrides])
        return [f"ran {o[0]}" for o in job_overrides]

    fake_original._cpueval_skips_done = False
    monkeypatch.setattr(launcher_module.BaseSubmititLauncher, "launch", fake_original)
    done = {"mode=jit": "skipped-return"}
    monkeypatch.setattr(submitit_patch, "_done_before_submit", lambda launcher, overrides: done.get(overrides[0]))
    submitit_patch.skip_done_before_submit()
    fake_launcher = SimpleNamespace(config=SimpleNamespace(hydra=SimpleNamespace(sweep=SimpleNamespace(dir=Path("/s")))))
    results = launcher_module.BaseSubmititLauncher.launch(fake_launcher, [["mode=eager"], ["mode=jit"], ["mode=compile"]], 0)
    assert submitted == [[["mode=eager"], ["mode=compile"]]]
    assert results == ["ran mode=eager", "skipped-return", "ran mode=compile"]  # in the sweep's order
