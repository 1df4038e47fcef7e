"""The plug-in contract, proven from outside the package: a throwaway mode (tests/data/throwaway_plugin:
one module + one yaml, no other file touched) is listed by `cpueval plugins`, runs, is recorded (with
the version of the package it declares), is refused with its own reason where it says so, is resumed,
and is reported. The same launch shows one job identity: results.json's config_hash is the job
directory's suffix and the report's job hash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.config_store import ConfigStore

from cpueval import identity, plugins, records, report
from cpueval.environment import package_version
from inprocess import run_cpueval

pytestmark = pytest.mark.slow

PLUGIN = Path(__file__).resolve().parent / "data" / "throwaway_plugin"
SEARCHPATH = f"hydra.searchpath=[file://{PLUGIN / 'conf'}]"
FAST = ("data.max_eval_samples=6", "runtime.warmup_batches=0", "runtime.progress=false")


def cpueval(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGIN), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "cpueval", *args], capture_output=True, text=True, env=env,
                            timeout=600)
    print(result.stdout[-3000:], result.stderr[-3000:])
    return result


@pytest.fixture
def plugin_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGIN))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    sweep_dir = tmp_path_factory.mktemp("contract") / "sweep"
    first = cpueval("-m", f"hydra.sweep.dir={sweep_dir}", SEARCHPATH, "mode=eager,throwaway", "precision=fp32,int8",
                    *FAST)
    return sweep_dir, first


def by_job(sweep_dir: Path) -> dict[tuple[str, str], records.RunRecord]:
    found = {}
    for path in sweep_dir.glob("*/results.json"):
        record = records.read_record(path.parent)
        found[(record.requested.mode, record.requested.precision)] = record
    return found


def test_cpueval_plugins_lists_it_with_its_states(plugin_importable: None) -> None:
    listing = run_cpueval(["plugins", SEARCHPATH])
    assert listing.returncode == 0
    lines = {line.split()[0] + " " + line.split()[2]: line for line in listing.stdout.splitlines()
             if " x " in line}
    assert "native" in lines["throwaway fp32"]
    assert "refused" in lines["throwaway int8"] and "the throwaway mode does not run quantized models" in lines[
        "throwaway int8"]
    assert "throwaway x" not in run_cpueval(["plugins"]).stdout  # only with its config dir on the search path


def test_it_runs_is_recorded_and_refused_with_its_own_reason(sweep) -> None:
    sweep_dir, first = sweep
    assert first.returncode == 3  # a job of the sweep was refused, none failed
    jobs = by_job(sweep_dir)
    assert set(jobs) == {("eager", "fp32"), ("eager", "int8"), ("throwaway", "fp32"), ("throwaway", "int8")}
    ran = jobs[("throwaway", "fp32")]
    assert ran.status == "ok" and ran.actual.mode == "throwaway" and ran.actual.details == {"label": "thrown"}
    assert ran.environment.versions["jsonschema"] == package_version("jsonschema")  # its declared package
    assert ran.metrics == jobs[("eager", "fp32")].metrics  # eager calls underneath: the same answers
    refused = jobs[("throwaway", "int8")]
    assert refused.status == "refused"
    assert refused.error.message == "precision=int8 with mode=throwaway: the throwaway mode does not run quantized models"


def test_one_job_identity_names_the_dir_is_the_record_hash_and_the_report_hash(sweep) -> None:
    sweep_dir, _ = sweep
    table = report.build_table([sweep_dir])
    assert len(table) == 4 and "throwaway" in set(table["mode"])
    for path in sweep_dir.glob("*/results.json"):
        record = records.read_record(path.parent)
        assert path.parent.name.endswith("__" + record.config_hash)
        assert record.config_hash == identity.job_hash(record.config)
        assert table.set_index("job").loc[path.parent.name, "job_hash"] == record.config_hash


def test_a_second_launch_resumes_it(sweep, plugin_importable: None) -> None:
    sweep_dir, _ = sweep
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/results.json")}
    again = run_cpueval(["-m", f"hydra.sweep.dir={sweep_dir}", SEARCHPATH, "mode=eager,throwaway", "precision=fp32,int8",
                         *FAST])
    assert "this launch ran 0, 4 had run before" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/results.json")} == before
    # the in-process run forgot the plug-in's schema with its dir (a later joblib sweep here pickles Hydra's store)
    assert not [name for name in ConfigStore.instance().repo.get("mode", {}) if name.startswith("throwaway")]


def test_the_result_neutral_keys_are_declared_once() -> None:
    """Hydra's override_dirname.exclude_keys (conf/config.yaml) leaves out exactly identity.NOT_IN_HASH
    (plus launcher settings, which live under `hydra` and never reach the hash)."""
    config = yaml.safe_load((plugins.CONF_DIR / "config.yaml").read_text())
    excluded = config["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    assert {k for k in excluded if not k.startswith("hydra.")} == set(identity.NOT_IN_HASH)
