"""One evaluation run, start to end, in the order a reader expects:

config -> plugins (task, precision, mode) and early refusals -> threads -> model + tokenizer ->
examples -> features (tokenized once, cached by content) -> batches (length-bucketed, dynamic
padding) -> precision + mode preparation -> warm-up -> timed forward loop -> (parity with eager
fp32) -> post-processing -> metrics -> files.

Every stage is timed. results.json is written when the run starts (status "running") and
rewritten atomically when it ends (ok / failed / refused / interrupted).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import datasets
import numpy as np
import torch
import transformers
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from cpueval import batching, plugins
from cpueval.data import fingerprint, load_examples, require_columns
from cpueval.environment import detect_capabilities, describe_environment, usable_cores
from cpueval.errors import Refused, UserError
from cpueval.models import load_model
from cpueval.modes.base import Mode, PrepareContext, PreparedModel
from cpueval.precisions.base import Precision
from cpueval.records import RESULTS_FILE, SCHEMA_VERSION, write_json_atomic
from cpueval.sweep import earlier_attempts, inject_fault
from cpueval.tasks.base import Task
from cpueval.timing import RssSampler, StageTimer, latency_summary, peak_rss_mb, per_second

log = logging.getLogger("cpueval")

FEATURE_CACHE_VERSION = 1


def config_hash(cfg: DictConfig) -> str:
    """Short hash of the resolved job config (runtime.force excluded: it does not change results)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved.get("runtime", {}).pop("force", None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:12]


# -- stages -------------------------------------------------------------------------------------
def configure_threads(runtime: DictConfig) -> dict[str, Any]:
    """Set torch's thread pools: explicit setting, else the cores Slurm granted, else the affinity mask."""
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if runtime.intra_op_threads is not None:
        intra, source = int(runtime.intra_op_threads), "runtime.intra_op_threads"
    elif slurm_cpus:
        intra, source = int(slurm_cpus), "SLURM_CPUS_PER_TASK"
    else:
        intra, source = usable_cores(), "affinity"
    if intra <= 0:
        raise UserError(f"runtime.intra_op_threads={intra} must be > 0 (or null for all usable cores)")
    torch.set_num_threads(intra)
    if runtime.inter_op_threads is not None:
        try:
            torch.set_num_interop_threads(int(runtime.inter_op_threads))
        except RuntimeError:  # can only be set once per process, before inter-op work starts
            log.warning("inter-op threads already fixed at %d in this process", torch.get_num_interop_threads())
    return {"intra_op_threads": torch.get_num_threads(), "inter_op_threads": torch.get_num_interop_threads(),
            "intra_op_source": source, "usable_cores": usable_cores()}


def tokenize_cached(task: Task, examples: datasets.Dataset, examples_fingerprint: str, tokenizer: Any,
                    tokenizer_sha: str, cache_dir: Optional[str]) -> tuple[datasets.Dataset, str]:
    """Features for (examples, tokenizer, task settings), computed once and reused by later runs.
    The key is content-based, so any sweep job or later sweep with the same inputs hits it."""
    key_material = {"examples": examples_fingerprint, "tokenizer": tokenizer_sha, "task": task.tokenization_key(),
                    "format": FEATURE_CACHE_VERSION, "datasets": datasets.__version__}
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:20]
    if not cache_dir:
        return task.tokenize(examples, tokenizer), "disabled"
    target = Path(cache_dir).expanduser() / "features" / key
    if (target / "dataset_info.json").exists():
        with _quiet_datasets():
            return datasets.load_from_disk(str(target)), "hit"
    features = task.tokenize(examples, tokenizer)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        with _quiet_datasets():
            features.save_to_disk(str(tmp))
        os.rename(tmp, target)  # atomic; a concurrent job that won the race leaves target in place
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return features, "miss"


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Cache reads and writes are not work the user waits on: no progress bars for them."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def make_batches(features: datasets.Dataset, tokenizer: Any, task: Task, runtime: DictConfig) -> list[batching.Batch]:
    columns = [c for c in task.input_columns if c in features.column_names]
    data = {c: features[c] for c in columns}
    lengths = [len(ids) for ids in data["input_ids"]]
    bucketing = runtime.length_bucketing and not task.config.pad_to_max_length
    pad_values = {"input_ids": tokenizer.pad_token_id or 0}
    return [batching.collate(data, idx, columns, pad_values, runtime.pad_to_multiple_of, task.config.max_seq_length)
            for idx in batching.plan_batches(lengths, runtime.batch_size, bucketing)]


def _set_progress_bars(enabled: bool) -> None:
    """Our bars (tokenization, forward loop) follow runtime.progress; transformers' weight-loading
    bars never show (loading is timed and reported instead)."""
    transformers.utils.logging.disable_progress_bar()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()


def _to_numpy(outputs: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    return {name: outputs[name].detach().float().numpy() for name in names}


@dataclass
class LoopResult:
    per_feature: list[Optional[dict[str, np.ndarray]]]
    latencies_s: list[float]
    seconds: float
    shapes: set[tuple[int, int]] = field(default_factory=set)


def forward_loop(prepared: PreparedModel, batches: Sequence[batching.Batch], task: Task, num_features: int,
                 progress: bool) -> LoopResult:
    """The timed loop: one forward call per batch (timed alone), outputs put back in feature order."""
    per_feature: list[Optional[dict[str, np.ndarray]]] = [None] * num_features
    latencies, shapes = [], set()
    start_loop = time.perf_counter()
    for batch in tqdm(batches, desc="Forward", unit="batch", disable=not progress, mininterval=1.0):
        start = time.perf_counter()
        outputs = prepared.forward(batch.inputs)
        latencies.append(time.perf_counter() - start)
        shapes.add(batch.shape)
        arrays = _to_numpy(outputs, task.output_names)
        for row, (index, length) in enumerate(zip(batch.indices, batch.lengths)):
            per_feature[index] = {k: (v[row, :length] if task.per_token else v[row]) for k, v in arrays.items()}
    return LoopResult(per_feature, latencies, time.perf_counter() - start_loop, shapes)


def parity_check(reference_model: torch.nn.Module, prepared: PreparedModel, batches: Sequence[batching.Batch],
                 task: Task, count: int, seed: int) -> dict[str, Any]:
    """Compare this run's outputs with eager fp32 on a fixed sample of batches."""
    from cpueval.parity import compare_outputs

    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(batches), size=min(count, len(batches)), replace=False).tolist())
    reference, candidate, lengths = [], [], []
    with torch.inference_mode():
        for i in chosen:
            reference.append(_to_numpy(reference_model(**batches[i].inputs), task.output_names))
            candidate.append(_to_numpy(prepared.forward(batches[i].inputs), task.output_names))
            lengths.append(batches[i].lengths.tolist())
    result = compare_outputs(reference, candidate, lengths if task.per_token else None)
    result["batches_compared"] = chosen
    return result


# -- the run --------------------------------------------------------------------------------------
class Run:
    """One job: holds the record that ends up in results.json."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.timer = StageTimer()
        self.warnings: list[str] = []
        self.record: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "status": "running",
            "error": None,
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "finished_at": None,
            "config_hash": config_hash(cfg),
            "config": OmegaConf.to_container(cfg, resolve=True),
            "requested": {"mode": cfg.mode.name, "precision": cfg.precision.name},
            "environment": describe_environment(),
            "run_dir": str(self.run_dir),
            "earlier_attempts": earlier_attempts(self.run_dir),  # interrupted/failed runs this one replaces
        }

    def save(self) -> Path:
        return write_json_atomic(self.run_dir / RESULTS_FILE, self.record)

    def fail(self, status: str, error: BaseException) -> None:
        self.record.update(status=status, error={"type": type(error).__name__, "message": str(error)})
        self._finish()

    def _finish(self, counts: Optional[tuple[int, int, int, float]] = None) -> None:
        """Close the record (timing, memory, and throughput from `counts` = examples, features,
        real tokens, loop seconds) and write it in one atomic step."""
        self.record["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.record["timing"] = {**self.timer.seconds, "total": time.perf_counter() - self._t0}
        if counts is not None:
            self.record["throughput"] = throughput(self.record["timing"]["total"], *counts)
        self.record["memory"] = {"peak_rss_mb": self._rss.stop(), "process_peak_rss_mb": peak_rss_mb()}
        self.record["warnings"] = self.warnings
        self.save()

    def execute(self) -> dict[str, Any]:
        self._t0 = time.perf_counter()
        self._rss = RssSampler().start()
        self.save()
        inject_fault(self.cfg)  # tests only: CPUEVAL_INJECT_FAULT (cpueval/sweep.py); no-op when unset
        cfg, rt, timer = self.cfg, self.cfg.runtime, self.timer
        caps = detect_capabilities()
        log.info("CPU: %s", caps.summary())

        task: Task = plugins.build(cfg.task)  # type: ignore[assignment]
        precision: Precision = plugins.build(cfg.precision)  # type: ignore[assignment]
        mode: Mode = plugins.build(cfg.mode)  # type: ignore[assignment]
        if rt.batch_size <= 0:
            raise UserError(f"runtime.batch_size={rt.batch_size} must be > 0")
        if rt.pad_to_multiple_of <= 0:
            raise UserError(f"runtime.pad_to_multiple_of={rt.pad_to_multiple_of} must be > 0 (1: no rounding)")
        task.validate_config()
        packages = [r.package for p in (task, mode, precision) for r in p.requirements()]
        self.record["environment"] = describe_environment(packages)  # before a refusal: versions decide resume
        self.warnings.extend(plugins.check_job(caps, task, mode, precision))
        self.record["threads"] = configure_threads(rt)
        _set_progress_bars(rt.progress)
        torch.manual_seed(rt.seed)

        with timer.stage("model_load"):
            loaded = load_model(cfg.model, task, rt.cache_dir)
        self.record["model"] = loaded.identity
        if loaded.identity["builtin_random_weights"]:
            self.warnings.append(
                f"the model has RANDOM weights ({cfg.model.name_or_path}): the metrics mean nothing. Evaluate a real "
                f"model with model.name_or_path=<hub id or local dir> and data.path=<file> (or data.name=<hub dataset>)")

        with timer.stage("data_load"):
            examples, source = load_examples(cfg.data)
            require_columns(examples, task.required_columns, source)
            examples = task.prepare_examples(examples, source)
            examples_fp = fingerprint(examples)
        self.record["data"] = {"source": source, "split": cfg.data.split, "num_examples": len(examples),
                               "fingerprint": examples_fp}

        with timer.stage("tokenize"):
            features, cache = tokenize_cached(task, examples, examples_fp, loaded.tokenizer,
                                              loaded.identity["tokenizer_sha256"], rt.cache_dir)
        with timer.stage("batching"):
            batches = make_batches(features, loaded.tokenizer, task, rt)
        real_tokens = int(sum(np.count_nonzero(b.inputs["attention_mask"].numpy()) for b in batches))
        self.record["data"].update(num_features=len(features), feature_cache=cache, num_batches=len(batches),
                                   real_tokens=real_tokens, padding_share=batching.padding_share(batches))
        self.record["task_stats"] = task.task_stats(examples, features)

        reference = copy.deepcopy(loaded.model) if rt.parity_batches > 0 else None
        with timer.stage("prepare"):
            model = loaded.model if mode.implements(precision) else precision.convert(loaded.model)
            ctx = PrepareContext(example=batches[0].inputs, cache_dir=Path(rt.cache_dir).expanduser() if rt.cache_dir else None,
                                 model_sha256=loaded.identity["weights_sha256"],
                                 intra_op_threads=self.record["threads"]["intra_op_threads"],
                                 inter_op_threads=rt.inter_op_threads)
            prepared = mode.prepare(model, precision, ctx)
        with timer.stage("warmup"):
            for batch in batches[: rt.warmup_batches]:
                prepared.forward(batch.inputs)

        loop = forward_loop(prepared, batches, task, len(features), rt.progress)
        timer.seconds["forward_loop"] = loop.seconds
        if reference is not None:
            with timer.stage("parity"):
                self.record["parity"] = parity_check(reference, prepared, batches, task, rt.parity_batches, rt.seed)
            del reference

        with timer.stage("postprocess"):
            predictions = task.postprocess(examples, features, loop.per_feature)
        with timer.stage("metrics"):
            metrics = task.compute_metrics(examples, predictions)
        files = task.write_predictions(examples, predictions, self.run_dir)

        self.record.update(
            status="ok",
            actual={"mode": prepared.mode, "precision": precision.name,
                    "attn_implementation": loaded.identity["attn_implementation"],
                    **self.record["threads"], "details": prepared.details,
                    "precision_details": prepared.precision_details or precision.details()},
            metrics=metrics,
            headline_metrics=list(task.headline_metrics()),
            latency_ms=latency_summary(loop.latencies_s),
            batch_latencies_ms=[round(s * 1000.0, 3) for s in loop.latencies_s],  # timed loop, batch order
            shapes={"distinct": len(loop.shapes), **prepared.stats()},
            files=[p.name for p in files],
        )
        self._finish((len(examples), len(features), real_tokens, loop.seconds))
        write_json_atomic(self.run_dir / "eval_results.json", hf_eval_results(task, self.record, len(features)))
        return self.record


def throughput(total: float, examples: int, features: int, tokens: int, loop_s: float) -> dict[str, Any]:
    return {
        "forward_examples_per_s": per_second(examples, loop_s),
        "forward_features_per_s": per_second(features, loop_s),
        "forward_tokens_per_s": per_second(tokens, loop_s),
        "e2e_examples_per_s": per_second(examples, total),
        "e2e_features_per_s": per_second(features, total),
    }


def hf_eval_results(task: Task, record: dict[str, Any], num_features: int) -> dict[str, Any]:
    """eval_results.json as transformers' run_qa.py wrote it: eval_samples counts features (windows)
    and eval_runtime covers prediction + post-processing + metrics, as Trainer.evaluate timed it."""
    timing = record["timing"]
    runtime = timing["forward_loop"] + timing["postprocess"] + timing["metrics"]
    return {**task.hf_eval_results(record["metrics"]), "eval_samples": num_features,
            "eval_runtime": round(runtime, 4), "eval_samples_per_second": round(num_features / runtime, 3),
            "eval_examples": record["data"]["num_examples"]}


def execute(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run one job and always leave a complete results.json, whatever happens."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"no value for {', '.join(missing)}: set it on the command line, e.g. {missing[0]}=<value>")
    run = Run(cfg, run_dir)
    try:
        return run.execute()
    except Refused as err:
        run.fail("refused", err)
        raise
    except UserError as err:
        run.fail("failed", err)
        raise
    except KeyboardInterrupt as err:
        run.fail("interrupted", err)
        raise
    except Exception as err:
        run.fail("failed", err)
        raise
