"""Every bad input a user can give gets one line naming the value or file, a non-zero exit, no
traceback, and a failed or refused record where a run directory exists; values that are capped or
not applied run, warn, and results.json records what ran (issue 15).

The table runs in-process through `cpueval.app.main` (Hydra's own entry, as the console script runs
it) with the builtin tiny model and data files of a few examples written here; a subprocess would
prove nothing more. Two subprocess tests check the console script itself (--help, a config typo).
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

import inprocess
from cpueval import records

TESTS_DATA = Path(__file__).resolve().parent / "data"
RUN = "run"  # the run directory, under each test's tmp_path


# -- data files --------------------------------------------------------------------------------------
def squad(*qas: dict[str, Any], context: str = "Paris is the capital of France.") -> str:
    return json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": list(qas)}]}]})


def qa(qid: str = "q1", answers: Optional[list] = None, **extra: Any) -> dict[str, Any]:
    answers = [{"text": "Paris", "answer_start": 0}] if answers is None else answers
    return {"id": qid, "question": "What is the capital of France?", "answers": answers, **extra}


GOOD_SQUAD = squad(qa("q1"), qa("q2"))
FLAT = {"id": "1", "question": "q?", "context": "Paris is nice", "answers": {"text": ["Paris"], "answer_start": [0]}}
SST2 = "sentence\tlabel\na fine film\t1\na dull film\t0\n"


@dataclass
class Case:
    id: str
    overrides: list[str]
    expect: str  # in the error line (or, for `ran`, in a warning of results.json)
    record: Optional[str] = "failed"  # failed | refused | None (no run directory: the config did not compose)
    files: dict[str, Any] = field(default_factory=dict)  # name -> text or bytes, written to tmp_path
    exit_code: Optional[int] = None  # when it matters (3: refused)


TEXT = ["task=text_classification", "data=mrpc_tsv", "data.columns.text=sentence", "data.columns.text_pair=null",
        "data.columns.label=label"]
CONLL = ["task=token_classification", "data=conll_file"]

CASES = [
    # -- config that does not compose: one line, no run directory
    Case("unknown_mode", ["mode=eagr"], "did you mean mode=eager", None),
    Case("unknown_precision", ["precision=fp64"], "precision is one of", None),
    Case("unknown_task", ["task=summarize"], "task is one of", None),
    Case("unknown_experiment", ["experiment=nightly"], "experiment is one of", None),
    Case("typo_key", ["runtime.bach_size=8"], "runtime.bach_size", None),
    Case("wrong_type", ["runtime.batch_size=many"], "many", None),
    Case("wrong_type_bool", ["runtime.force=perhaps"], "perhaps", None),
    Case("unknown_column_key", ["data.columns.sentence=text"], "data.columns.sentence", None),
    Case("override_syntax", ["task.max_seq_length=[1"], "max_seq_length", None),
    Case("run_dir_under_a_file", ["hydra.run.dir={tmp}/afile/run"], "hydra.run.dir", None, {"afile": "x"}),
    # -- runtime and task values
    Case("batch_size_zero", ["runtime.batch_size=0"], "runtime.batch_size=0"),
    Case("batch_size_negative", ["runtime.batch_size=-3"], "runtime.batch_size=-3"),
    Case("warmup_negative", ["runtime.warmup_batches=-1"], "runtime.warmup_batches=-1"),
    Case("parity_negative", ["runtime.parity_batches=-1"], "runtime.parity_batches=-1"),
    Case("pad_multiple_zero", ["runtime.pad_to_multiple_of=0"], "runtime.pad_to_multiple_of=0"),
    Case("threads_zero", ["runtime.intra_op_threads=0"], "runtime.intra_op_threads=0"),
    Case("threads_negative", ["runtime.intra_op_threads=-2"], "runtime.intra_op_threads=-2"),
    Case("max_seq_length_zero", ["task.max_seq_length=0"], "task.max_seq_length=0"),
    Case("doc_stride_too_long", ["task.doc_stride=384"], "task.doc_stride=384"),
    Case("doc_stride_zero", ["task.doc_stride=0"], "task.doc_stride=0"),
    Case("n_best_zero", ["task.n_best_size=0"], "task.n_best_size=0"),
    Case("no_room_for_context", ["task.max_seq_length=24", "task.doc_stride=8"], "leaves no room for context"),
    Case("max_eval_samples_zero", ["data.max_eval_samples=0"], "data.max_eval_samples=0"),
    Case("predictions_format", [*TEXT, "data.path={tmp}/sst2.tsv", "task.predictions_format=xml"],
         "task.predictions_format=xml", files={"sst2.tsv": SST2}),
    Case("label_map_unknown_label", [*TEXT, "data.path={tmp}/sst2.tsv", "+task.label_map.1=great"], "task.label_map",
         files={"sst2.tsv": SST2}),
    Case("ipex_not_installed", ["mode=ipex"], "mode=ipex", "refused", exit_code=3),
    # -- model and tokenizer
    Case("model_missing_dir", ["model.name_or_path=/nonexistent/model"], "model.name_or_path=/nonexistent/model"),
    Case("model_unknown_builtin", ["model.name_or_path=builtin:huge-bert"], "builtin:huge-bert"),
    Case("model_without_tokenizer", ["model.name_or_path={tmp}/no_tokenizer"], "has no tokenizer files"),
    Case("tokenizer_missing_dir", ["model.tokenizer=/nonexistent/tok"], "model.tokenizer=/nonexistent/tok"),
    Case("tokenizer_dir_without_files", ["model.tokenizer={tmp}/empty_dir"], "model.tokenizer="),
    Case("tokenizer_larger_than_embeddings", ["model.tokenizer={tmp}/big_tokenizer"], "embeddings have"),
    Case("weights_truncated", ["model.name_or_path={tmp}/truncated"], "model.safetensors"),
    Case("weights_garbage", ["model.name_or_path={tmp}/garbage"], "model.safetensors"),
    Case("attn_implementation_unknown", ["model.attn_implementation=warp_drive"], "model.attn_implementation=warp_drive"),
    Case("checkpoint_for_another_head", ["model.name_or_path={tmp}/classifier"], "ForSequenceClassification"),
    Case("cache_dir_under_a_file", ["runtime.cache_dir={tmp}/afile/cache"], "runtime.cache_dir", files={"afile": "x"}),
    # -- where the data is
    Case("data_neither_path_nor_name", ["data.path=null"], "data.path"),
    Case("data_both_path_and_name", ["data.name=squad"], "set exactly one of"),
    Case("data_missing_file", ["data.path=/nonexistent/dev.json"], "data.path=/nonexistent/dev.json"),
    Case("data_directory", ["data.path={tmp}"], "is a directory"),
    Case("data_unknown_format", ["data.path={tmp}/dev.json", "data.format=xml"], "data.format=xml",
         files={"dev.json": GOOD_SQUAD}),
    Case("data_unknown_suffix", ["data.path={tmp}/dev.xyz"], "set data.format", files={"dev.xyz": GOOD_SQUAD}),
    Case("data_missing_mapped_column", ["data.path={tmp}/dev.jsonl", "data.columns.question=query"], "query",
         files={"dev.jsonl": json.dumps(FLAT) + "\n"}),
    # -- QA data, checked before any forward call
    Case("json_empty", ["data.path={tmp}/empty.json"], "empty.json", files={"empty.json": ""}),
    Case("json_blank", ["data.path={tmp}/blank.json"], "blank.json", files={"blank.json": "  \n\n"}),
    Case("json_broken", ["data.path={tmp}/broken.json"], "broken.json", files={"broken.json": '{"data": [ {"title": '}),
    Case("json_not_records", ["data.path={tmp}/numbers.json"], "numbers.json", files={"numbers.json": "[1, 2]"}),
    Case("json_not_utf8", ["data.path={tmp}/latin1.json"], "not UTF-8", files={"latin1.json": b'[{"id": "caf\xe9"}]'}),
    Case("squad_without_answers", ["data.path={tmp}/noans.json"], "has no gold answer",
         files={"noans.json": squad(qa("q1", answers=[]))}),
    Case("squad_v2_data_as_v1", ["data.path={tmp}/v2.json"], "task.version_2_with_negative=true",
         files={"v2.json": squad(qa("q1"), qa("q2", answers=[], is_impossible=True))}),
    Case("answer_start_not_int", ["data.path={tmp}/start.json"], "answer_start='zero'",
         files={"start.json": squad(qa("q1", answers=[{"text": "Paris", "answer_start": "zero"}]))}),
    Case("answer_start_float", ["data.path={tmp}/float.json"], "answer_start=0.5",
         files={"float.json": squad(qa("q1", answers=[{"text": "Paris", "answer_start": 0.5}]))}),
    Case("squad_entry_lacks_context", ["data.path={tmp}/nocontext.json"], "nocontext.json",
         files={"nocontext.json": json.dumps({"data": [{"title": "t", "paragraphs": [{"qas": [qa()]}]}]})}),
    Case("lone_surrogate", ["data.path={tmp}/surrogate.json"], "lone surrogate",
         files={"surrogate.json": squad(qa("q1"), context="Paris SURROGATE is the capital.").replace("SURROGATE", "\\ud800")}),
    Case("duplicate_ids", ["data.path={tmp}/dups.json"], "not unique", files={"dups.json": squad(qa("q1"), qa("q1"))}),
    Case("jsonl_without_answers", ["data.path={tmp}/lacking.jsonl"], "answers",
         files={"lacking.jsonl": json.dumps({k: v for k, v in FLAT.items() if k != "answers"}) + "\n"}),
    Case("answers_as_text_in_csv", ["data.path={tmp}/qa.csv"], "answers must be",
         files={"qa.csv": "id,question,context,answers\n1,q?,Paris is nice,Paris\n"}),
    Case("answer_lists_differ", ["data.path={tmp}/ragged_answers.jsonl"], "answer_start values",
         files={"ragged_answers.jsonl": json.dumps({**FLAT, "answers": {"text": ["a", "b"], "answer_start": [0]}}) + "\n"}),
    # -- tables and labels
    Case("csv_empty", [*TEXT, "data.path={tmp}/empty.csv", "data.format=csv"], "empty.csv", files={"empty.csv": ""}),
    Case("csv_header_only", [*TEXT, "data.path={tmp}/header.csv", "data.format=csv"], "header but no rows",
         files={"header.csv": "sentence,label\n"}),
    Case("csv_ragged", [*TEXT, "data.path={tmp}/ragged.csv", "data.format=csv"], "row 2 has 3 fields",
         files={"ragged.csv": "sentence,label\na fine film,1\na dull, film,0\n"}),
    Case("tsv_empty", [*TEXT, "data.path={tmp}/empty.tsv"], "empty.tsv", files={"empty.tsv": ""}),
    Case("tsv_header_only", [*TEXT, "data.path={tmp}/header.tsv"], "header but no rows",
         files={"header.tsv": "sentence\tlabel\n"}),
    Case("tsv_ragged", [*TEXT, "data.path={tmp}/ragged.tsv"], "row 1 has 3 fields",
         files={"ragged.tsv": "sentence\tlabel\na fine\tfilm\t1\n"}),
    Case("label_cell_empty", [*TEXT, "data.path={tmp}/nolabel.tsv"], "label cell is empty",
         files={"nolabel.tsv": "sentence\tlabel\na fine film\t\na dull film\t0\n"}),
    Case("label_unknown", [*TEXT, "data.path={tmp}/maybe.tsv"], "label 'maybe'",
         files={"maybe.tsv": "sentence\tlabel\na fine film\tmaybe\n"}),
    Case("text_cell_empty", [*TEXT, "data.path={tmp}/notext.tsv"], "column 'text'",
         files={"notext.tsv": "sentence\tlabel\n\t1\n"}),
    Case("no_label_column", [*TEXT, "data.path={tmp}/unlabelled.tsv", "data.columns.label=null"], "no 'label' column",
         files={"unlabelled.tsv": "sentence\ta\nfine\tx\n"}),
    Case("conll_empty", [*CONLL, "data.path={tmp}/empty.conll"], "empty.conll", files={"empty.conll": ""}),
    Case("conll_malformed", [*CONLL, f"data.path={TESTS_DATA / 'conll_malformed.conll'}"], "conll_malformed.conll"),
    Case("conll_no_tag_column", [*CONLL, "data.path={tmp}/notag.conll"], "notag.conll", files={"notag.conll": "Maria\n"}),
]


# -- running cpueval in-process ---------------------------------------------------------------------------
@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    run_dir: Path

    @property
    def record(self) -> Optional[dict[str, Any]]:
        path = self.run_dir / records.RESULTS_FILE
        return json.loads(path.read_text()) if path.exists() else None


def run_cpueval(argv: list[str], tmp_path: Path, via_main: bool = False) -> Outcome:
    """`cpueval <argv>` in this process. `via_main`: through app.main, Hydra's entry, as the console
    script runs it (needed where Hydra itself reports: composition, its run directory, --help, --cfg).
    Otherwise the job's body runs on a config composed once (inprocess.run_job_body)."""
    run_dir = tmp_path / RUN
    argv = ["runtime.progress=false", *(a.replace("{tmp}", str(tmp_path)) for a in argv)]
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        argv.insert(0, f"hydra.run.dir={run_dir}")
    if via_main:
        ran = inprocess.run_cpueval(argv, env={"HYDRA_FULL_ERROR": None})
    else:
        ran = inprocess.run_job_body(argv, run_dir)
    return Outcome(ran.code, ran.stdout, ran.stderr, run_dir)


def error_line(outcome: Outcome) -> str:
    """The one line a user error ends in: the last line on stderr, with no traceback anywhere."""
    assert outcome.code != 0, outcome.stdout[-1500:] + outcome.stderr[-1500:]
    assert "Traceback" not in outcome.stderr + outcome.stdout, outcome.stderr[-3000:]
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert "error" in lines[-1].lower(), lines[-5:]
    return lines[-1]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Broken variants of the builtin QA model: no tokenizer files, truncated and garbage weights, a
    tokenizer larger than the model's embeddings, a checkpoint for another head."""
    from transformers import AutoTokenizer

    from cpueval.assets.builtin import ensure_builtin_model

    root = tmp_path_factory.mktemp("models")
    cache = tmp_path_factory.getbasetemp() / "cpueval-cache"  # the session's (conftest): built once, shared with the runs
    good = ensure_builtin_model("builtin:tiny-bert", "AutoModelForQuestionAnswering", cache_dir=cache)
    weights = (good / "model.safetensors").read_bytes()
    for name in ("no_tokenizer", "truncated", "garbage"):
        shutil.copytree(good, root / name)
    for path in (root / "no_tokenizer").iterdir():
        if path.name.startswith(("tokenizer", "vocab", "special_tokens")):
            path.unlink()
    (root / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    (root / "garbage" / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    tokenizer = AutoTokenizer.from_pretrained(good)
    tokenizer.add_tokens([f"extra{i}" for i in range(10_000)])
    tokenizer.save_pretrained(root / "big_tokenizer")
    (root / "empty_dir").mkdir()
    classifier = ensure_builtin_model("builtin:tiny-bert", "AutoModelForSequenceClassification", ["neg", "pos"],
                                      cache_dir=cache)
    shutil.copytree(classifier, root / "classifier")
    return root


def write_files(tmp_path: Path, files: dict[str, Any], models: Path) -> None:
    for name in ("no_tokenizer", "truncated", "garbage", "big_tokenizer", "empty_dir", "classifier"):
        (tmp_path / name).symlink_to(models / name)
    for name, content in files.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_ends_in_one_line_and_a_record(case: Case, tmp_path, models) -> None:
    write_files(tmp_path, case.files, models)
    outcome = run_cpueval(case.overrides, tmp_path, via_main=case.record is None)
    line = error_line(outcome)
    assert case.expect in line, line
    if case.exit_code is not None:
        assert outcome.code == case.exit_code
    record = outcome.record
    if case.record is None:
        assert record is None, "a config that does not compose leaves no record"
    else:
        assert record is not None and record["status"] == case.record, record and record["status"]
        assert record["error"]["message"] in line  # the record says what the user was told


# -- values that run, adjusted or not applied: results.json records what ran, and warns --------------------
@pytest.mark.parametrize("overrides,warning,ran", [
    (["task.max_seq_length=1024"], "task.max_seq_length=1024", {"actual.max_seq_length": 512}),
    (["runtime.intra_op_threads=64"], "runtime.intra_op_threads=64 is more than", {"threads.intra_op_threads": 64}),
    (["data.split=test"], "data.split=test", {"data.split": None}),
    (["data.revision=v2"], "data.revision=v2", {"data.split": None}),
    (["model.name_or_path={tmp}/qa_model", "model.revision=v1"], "model.revision=v1", {"model.revision": None}),
], ids=["max_seq_length_capped", "threads_oversubscribed", "split_of_a_local_file", "revision_of_a_local_file",
        "revision_of_a_local_model"])
def test_adjusted_or_inapplicable_values_run_warn_and_record_what_ran(overrides, warning, ran, tmp_path, models) -> None:
    from cpueval.assets.builtin import ensure_builtin_model

    (tmp_path / "qa_model").symlink_to(ensure_builtin_model("builtin:tiny-bert", "AutoModelForQuestionAnswering"))
    (tmp_path / "dev.json").write_text(GOOD_SQUAD)
    outcome = run_cpueval(["data.path={tmp}/dev.json", *overrides], tmp_path)
    assert outcome.code == 0, outcome.stderr[-2000:]
    record = outcome.record
    assert record["status"] == "ok"
    assert any(warning in w for w in record["warnings"]), record["warnings"]
    assert warning in outcome.stdout  # the summary shows it
    for dotted, value in ran.items():
        node = record
        for part in dotted.split("."):
            node = node[part]
        assert node == value, dotted


# -- caches and disks ---------------------------------------------------------------------------------------
def test_a_corrupt_feature_cache_entry_is_named_and_rebuilt(tmp_path) -> None:
    (tmp_path / "dev.json").write_text(GOOD_SQUAD)
    cache = tmp_path / "cache"
    args = ["data.path={tmp}/dev.json", f"runtime.cache_dir={cache}", "runtime.force=true"]
    first = run_cpueval(args, tmp_path)
    assert first.code == 0 and first.record["data"]["feature_cache"] == "miss"
    [entry] = (cache / "features").iterdir()
    arrow = next(entry.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:40])
    again = run_cpueval(args, tmp_path)
    assert again.code == 0, again.stderr[-2000:]
    assert str(entry) in again.stderr and "corrupt" in again.stderr
    assert again.record["data"]["feature_cache"] == "miss"
    assert again.record["metrics"] == first.record["metrics"]
    third = run_cpueval(args, tmp_path)
    assert third.record["data"]["feature_cache"] == "hit"


def test_a_full_disk_leaves_a_failed_record_not_a_running_one(tmp_path, monkeypatch) -> None:
    real_save = records.save

    def save(record, run_dir=None):
        if record.status != "running":
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / RUN / records.RESULTS_FILE))
        return real_save(record, run_dir)

    monkeypatch.setattr(records, "save", save)
    (tmp_path / "dev.json").write_text(GOOD_SQUAD)
    outcome = run_cpueval(["data.path={tmp}/dev.json"], tmp_path)
    line = error_line(outcome)
    assert "hydra.run.dir" in line and "No space left on device" in line and "results.json" in line
    assert (outcome.run_dir / "predictions.json").exists()
    assert outcome.record["status"] == "failed" and "No space left" in outcome.record["error"]["message"]


# -- first contact ---------------------------------------------------------------------------------------------
def test_column_mapping_works_as_documented_for_every_canonical_column(tmp_path) -> None:
    from cpueval.config import canonical_columns

    assert {"id", "question", "context", "answers", "text", "text_pair", "label", "tokens", "tags"} <= set(canonical_columns())
    renamed = {"qid": "1", "q": "What is nice?", "passage": "Paris is nice", "gold": FLAT["answers"]}
    (tmp_path / "mine.jsonl").write_text(json.dumps(renamed) + "\n")
    outcome = run_cpueval(["data.path={tmp}/mine.jsonl", "data.columns.id=qid", "data.columns.question=q",
                           "data.columns.context=passage", "data.columns.answers=gold"], tmp_path)
    assert outcome.code == 0, outcome.stderr[-2000:]
    assert outcome.record["data"]["num_examples"] == 1


def test_experiment_sets_experiment_name(tmp_path) -> None:
    outcome = run_cpueval(["experiment=squad_v2_sample", "--cfg", "job"], tmp_path, via_main=True)
    assert outcome.code == 0 and "experiment_name: squad_v2_sample" in outcome.stdout


def test_help_names_cpueval_its_groups_and_subcommands(tmp_path) -> None:
    outcome = run_cpueval(["--help"], tmp_path, via_main=True)
    assert outcome.code == 0
    assert outcome.stdout.startswith("cpueval")
    for text in ("cpueval report", "cpueval plugins", "cpueval mlflow", "mode: compile, eager", "precision: bf16, fp32, int8"):
        assert text in outcome.stdout
    assert "_schema" not in outcome.stdout and "app" not in outcome.stdout.split()


def test_report_errors_go_to_stderr(tmp_path, capsys) -> None:
    from cpueval import report

    assert report.main([str(tmp_path / "nothing_here")]) != 0
    captured = capsys.readouterr()
    assert "error" in captured.err and "nothing_here" in captured.err and "error" not in captured.out


def console(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cpueval", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_the_console_script_answers_help_and_config_errors_without_torch(tmp_path) -> None:
    """The real entry, in a fresh process: --help and a config error answer without importing torch,
    transformers or datasets (which is what makes them answer at once)."""
    probe = ("import sys, runpy; sys.argv = ['cpueval'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('cpueval', run_name='__main__')\n"
             "finally:\n    loaded = [m for m in ('torch', 'datasets') if m in sys.modules\n"
             "              and type(sys.modules[m]).__name__ != '_DeferredModule']\n"
             "    loaded += [m for m in ('transformers', 'sklearn') if m in sys.modules]\n"
             "    print('LOADED', loaded, file=sys.stderr)\n")
    for args, code in ((["--help"], 0), (["mode=eagr"], 2)):
        result = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=tmp_path,
                                timeout=300)
        assert result.returncode == code, result.stderr[-2000:]
        assert "LOADED []" in result.stderr, result.stderr[-500:]
        assert "Traceback" not in result.stderr
    typo = console("mode=eagr", cwd=tmp_path)
    assert typo.returncode == 2 and typo.stderr.strip().splitlines() == [
        "cpueval: error: Could not find 'mode/eagr': did you mean mode=eager? mode is one of compile, eager, ipex, "
        "ipex_jit, jit, onnxruntime, openvino"]


def test_declared_columns_leave_existing_job_hashes_unchanged() -> None:
    """Unmapped canonical columns (null) are left out of the job's identity: sweeps run before they were
    declared still resume (skip-if-done compares hashes)."""
    from cpueval.identity import job_config, job_hash

    cfg = inprocess.compose_config(["data.columns.text=sentence"])
    plain = job_config(cfg)
    assert plain["data"]["columns"] == {"text": "sentence"}
    plain["data"]["columns"] = {"text": "sentence", "label": None}
    assert job_hash(plain) == job_hash(cfg)
