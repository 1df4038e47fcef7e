"""One evaluation run, start to end, in the order a reader expects:

config -> plugins (task, precision, mode) and early refusals -> threads -> model + tokenizer ->
examples -> features (tokenized once, cached by content) -> batches (length-bucketed, dynamic
padding) -> precision + mode preparation -> warm-up -> timed forward loop -> (parity with eager
fp32) -> post-processing -> metrics -> files.

`Run.execute` is that list of named stages; each is timed. results.json (a `records.RunRecord`) is
written when the run starts (status "running") and rewritten atomically when it ends (ok / failed /
refused / interrupted).
"""

from __future__ import annotations

import contextlib
import copy
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

from cpueval import batching, cache_files, calibration, instances, int8_search, plugins, records
from cpueval.checks import inapplicable_settings, os_error_as_user_error, oversubscription
from cpueval.data import fingerprint, load_examples, require_columns
from cpueval.config import Scenario
from cpueval.environment import describe_environment, detect_capabilities, package_version, usable_cores
from cpueval.errors import Refused, UserError
from cpueval.identity import job_hash
from cpueval.models import LoadedModel, load_model, max_positions
from cpueval.modes._runtime_cache import tensors_digest
from cpueval.modes.base import Mode, PrepareContext, PreparedModel
from cpueval.precisions.base import Precision
from cpueval.records import (Actual, DataInfo, ErrorInfo, Latency, Memory, ModelInfo, OutputParity, Parity, Requested, RunRecord,
                             Threads, Throughput, Timing, write_json_atomic)
from cpueval.resume import earlier_attempts, now
from cpueval.tasks.base import Predictions, Task
from cpueval.timing import RssSampler, StageTimer, latency_summary, peak_rss_mb, per_second

log = logging.getLogger("cpueval")

FEATURE_CACHE_VERSION = 2  # 2: entries carry a manifest of checksums (cpueval/cache_files.py)
FEATURE_MANIFEST = "cpueval_manifest.json"


# -- stages -------------------------------------------------------------------------------------
def configure_threads(runtime: DictConfig) -> Threads:
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
    return Threads(intra_op_threads=torch.get_num_threads(), inter_op_threads=torch.get_num_interop_threads(),
                   intra_op_source=source, usable_cores=usable_cores())


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
    cached = _load_feature_cache(target)
    if cached is not None:
        return cached, "hit"
    features = task.tokenize(examples, tokenizer)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        with _quiet_datasets():
            features.save_to_disk(str(tmp))
        cache_files.write_manifest(tmp, FEATURE_MANIFEST)
        os.rename(tmp, target)  # atomic; a concurrent job that won the race leaves target in place
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return features, "miss"


def _load_feature_cache(target: Path) -> Optional[datasets.Dataset]:
    """The cached features at `target`, or None when absent; a corrupt entry is reported and removed."""
    if not target.exists():
        return None
    problem = cache_files.problem(target, FEATURE_MANIFEST)
    if problem is None:
        try:
            with _quiet_datasets():
                return datasets.load_from_disk(str(target))
        except Exception as err:  # noqa: BLE001 - any load failure means the entry is unusable
            problem = f"{type(err).__name__}: {str(err).strip()[:100]}"
    log.warning("feature cache entry %s is corrupt (%s): removing it and tokenizing again", target, problem)
    cache_files.discard(target)
    return None


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


def make_batches(features: datasets.Dataset, tokenizer: Any, task: Task, runtime: DictConfig,
                 one_request_at_a_time: bool = False) -> list[batching.Batch]:
    """Length-bucketed batches of runtime.batch_size; or, for the latency scenario, one window per
    batch in dataset order."""
    columns = [c for c in task.input_columns if c in features.column_names]
    data = {c: features[c] for c in columns}
    lengths = [len(ids) for ids in data["input_ids"]]
    bucketing = runtime.length_bucketing and not task.config.pad_to_max_length and not one_request_at_a_time
    size = 1 if one_request_at_a_time else runtime.batch_size
    pad_values = {"input_ids": tokenizer.pad_token_id or 0}
    return [batching.collate(data, idx, columns, pad_values, runtime.pad_to_multiple_of, task.config.max_seq_length)
            for idx in batching.plan_batches(lengths, size, bucketing)]


def _third_party_logs_to_job_log() -> None:
    """transformers adds its own stderr handler on import; the job log (conf/config.yaml's job_logging)
    keeps its warnings, the console shows cpueval's."""
    transformers.utils.logging.disable_default_handler()


def set_progress_bars(enabled: bool) -> None:
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
    started: float = 0.0  # perf_counter at the first batch


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
    return LoopResult(per_feature, latencies, time.perf_counter() - start_loop, shapes, start_loop)


def prepare_model(model: torch.nn.Module, mode: Mode, precision: Precision, ctx: PrepareContext) -> PreparedModel:
    """Precision conversion, then the mode's preparation (a mode that implements the precision gets fp32)."""
    converted = model if mode.implements(precision) else precision.convert(model, ctx.calibration)
    return mode.prepare(converted, precision, ctx)


def warm_up(prepared: PreparedModel, batches: Sequence[batching.Batch], count: int) -> None:
    """Untimed forward calls on the first `count` batches."""
    for batch in batches[:count]:
        prepared.forward(batch.inputs)


def merge_instances(results: Sequence[instances.InstanceResult], num_features: int, num_batches: int) -> LoopResult:
    """The instances' outputs in feature order and their latencies in batch order, as one loop from the
    first instance's first batch to the last instance's last batch."""
    per_feature: list[Optional[dict[str, np.ndarray]]] = [None] * num_features
    latencies = [0.0] * num_batches
    for result in results:
        for index, arrays in result.per_feature.items():
            per_feature[index] = arrays
        for number, seconds in zip(result.batch_numbers, result.latencies_s):
            latencies[number] = seconds
    start = min(r.loop_start for r in results)
    end = max(r.loop_start + r.loop_seconds for r in results)
    return LoopResult(per_feature, latencies, end - start, set().union(*(r.shapes for r in results)), start)


def instance_record(result: instances.InstanceResult, tokens: int, launched_at: float) -> records.Instance:
    features = len(result.per_feature)
    return records.Instance(
        index=result.index, pid=result.pid, cores=result.cores, threads=result.threads,
        batches=len(result.batch_numbers), features=features, real_tokens=tokens,
        prepare_s=result.prepare_s, warmup_s=result.warmup_s, forward_loop_s=result.loop_seconds,
        loop_start_s=result.loop_start - launched_at, loop_end_s=result.loop_start + result.loop_seconds - launched_at,
        forward_features_per_s=per_second(features, result.loop_seconds), peak_rss_mb=result.peak_rss_mb,
        latency_ms=Latency(**latency_summary(result.latencies_s)))


def parity_check(reference_model: torch.nn.Module, prepared: PreparedModel, batches: Sequence[batching.Batch],
                 task: Task, count: int, seed: int) -> Parity:
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
    outputs = {name: OutputParity(**values) for name, values in result.pop("outputs").items()}
    return Parity(**result, outputs=outputs, batches_compared=chosen)


# -- the run --------------------------------------------------------------------------------------
class Run:
    """One job. `execute` runs the stages in order; each stage leaves its results on `self` and in
    `self.record`, the RunRecord that ends up in results.json."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.rt = cfg, cfg.runtime
        self.run_dir = Path(run_dir)
        self.timer = StageTimer()
        self.record = RunRecord(
            status="running", started_at=now(), config_hash=job_hash(cfg),
            config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),  # type: ignore[arg-type]
            requested=Requested(mode=cfg.mode.name, precision=cfg.precision.name), run_dir=str(self.run_dir),
            environment=records.parse(records.Environment, describe_environment()),  # the plug-ins' packages join later
            earlier_attempts=earlier_attempts(self.run_dir),  # interrupted/failed runs this one replaces
        )

    def execute(self) -> RunRecord:
        self.begin()            # "running" record on disk, memory sampling on
        self.check_plugins()    # config -> task, mode, precision; refusals before anything loads
        self.load_model()       # model + tokenizer
        self.load_data()        # examples, checked against the task's columns
        self.calibration_data() # static quantization's calibration batches, if the mode or precision needs them
        self.validation_data()  # the int8 search's validation slice, if precision.accuracy_target is set
        self.tokenize()         # features, cached by content
        self.make_batches()     # length-bucketed, dynamically padded
        self.search_int8()      # precision.accuracy_target: which layers stay fp32 (cpueval/int8_search.py)
        self.prepare()          # precision conversion + mode preparation (trace/compile/export + warm-up calls)
        self.warm_up()          # runtime.warmup_batches untimed calls
        self.timed_loop()       # one timed forward call per batch (runtime.instances > 1: the three stages above
                                # run in each instance, cpueval/instances.py)
        self.compare_parity()   # with eager fp32, if runtime.parity_batches > 0
        self.postprocess()      # per-feature outputs -> per-example predictions
        self.score()            # metrics
        self.write_outputs()    # predictions files, results.json (ok), eval_results.json
        return self.record

    # -- stages -----------------------------------------------------------------------------------
    def begin(self) -> None:
        self._t0 = time.perf_counter()
        self._rss = RssSampler().start()
        records.save(self.record)

    def check_plugins(self) -> None:
        rt = self.rt
        self.caps = detect_capabilities()
        log.info("CPU: %s", self.caps.summary())
        self.task: Task = plugins.build(self.cfg.task)  # type: ignore[assignment]
        self.precision: Precision = plugins.build(self.cfg.precision)  # type: ignore[assignment]
        self.mode: Mode = plugins.build(self.cfg.mode)  # type: ignore[assignment]
        if rt.batch_size <= 0:
            raise UserError(f"runtime.batch_size={rt.batch_size} must be > 0")
        if rt.pad_to_multiple_of <= 0:
            raise UserError(f"runtime.pad_to_multiple_of={rt.pad_to_multiple_of} must be > 0 (1: no rounding)")
        for key in ("warmup_batches", "parity_batches"):
            if rt[key] < 0:
                raise UserError(f"runtime.{key}={rt[key]} must be >= 0 (0: none)")
        self.task.validate_config()
        self.core_sets = self.check_instances()
        job = (self.task, self.mode, self.precision)
        add_plugin_facts(self.record.environment, [r.package for p in job for r in p.requirements()], self.caps)
        self.record.warnings.extend(plugins.check_job(self.caps, *job))
        self.record.warnings.extend(inapplicable_settings(self.cfg))
        self.record.threads = configure_threads(rt)
        if self.core_sets:  # what each instance runs with
            self.record.threads.intra_op_threads = len(self.core_sets[0])
            self.record.threads.intra_op_source = "runtime.instances/cores_per_instance"
        self.record.warnings.extend(oversubscription(self.record.threads))
        set_progress_bars(rt.progress)
        _third_party_logs_to_job_log()
        torch.manual_seed(rt.seed)

    def check_instances(self) -> list[list[int]]:
        """The instances' core sets (runtime.instances > 1), else []."""
        rt = self.rt
        if rt.instances == 1 and rt.cores_per_instance is None:
            return []
        if rt.parity_batches > 0:
            raise UserError(f"runtime.parity_batches={rt.parity_batches} needs runtime.instances=1 (parity runs in "
                            "this process): run the parity check as a separate job")
        return instances.plan_cores(rt.instances, rt.cores_per_instance, sorted(os.sched_getaffinity(0)))

    def load_model(self) -> None:
        with self.timer.stage("model_load"):
            self.loaded: LoadedModel = load_model(self.cfg.model, self.task, self.rt.cache_dir)
        self.record.model = ModelInfo(**self.loaded.identity)
        self.fit_sequence_length()
        if self.record.model.builtin_random_weights:
            self.record.warnings.append(
                f"the model has RANDOM weights ({self.cfg.model.name_or_path}): the metrics mean nothing. Evaluate a "
                "real model with model.name_or_path=<hub id or local dir> and data.path=<file> (or data.name=<hub dataset>)")

    def fit_sequence_length(self) -> None:
        """task.max_seq_length above what the model accepts is capped (warned; results.json's
        actual.max_seq_length says what ran), then the task's settings are checked again."""
        limit = max_positions(self.loaded.model, self.loaded.tokenizer)
        asked = self.task.config.max_seq_length
        if limit is not None and asked > limit:
            self.task.config.max_seq_length = limit
            self.record.warnings.append(f"task.max_seq_length={asked} is more than this model accepts ({limit} "
                                        f"positions): ran with {limit} (actual.max_seq_length in results.json)")
            self.task.validate_config()

    def load_data(self) -> None:
        with self.timer.stage("data_load"):
            examples, source = load_examples(self.cfg.data)
            require_columns(examples, self.task.required_columns, source)
            self.examples = self.task.prepare_examples(examples, source)
            self.examples_fp = fingerprint(self.examples)
        split = None if self.cfg.data.path else self.cfg.data.split  # a local file has no splits: all rows ran
        self.record.data = DataInfo(source=source, split=split, num_examples=len(self.examples),
                                    fingerprint=self.examples_fp)

    def calibration_data(self) -> None:
        self.calibration: Optional[list[Any]] = None
        if not (self.mode.needs_calibration(self.precision) or self.precision.needs_calibration(self.mode)):
            return
        settings = getattr(self.precision.config, "calibration", None)
        if settings is None:
            raise UserError(f"mode={self.mode.name} precision={self.precision.name} needs calibration data, but "
                            f"precision={self.precision.name} has no calibration settings")
        with self.timer.stage("calibration"):
            _, _, batches, self.record.data.calibration = self._set_aside(settings, "precision.calibration", "calibrated")
        self.calibration = [b.inputs for b in batches]

    def validation_data(self) -> None:
        """The int8 search's validation slice, after the calibration examples (never the scored ones unless
        precision.search.validation.source=scored, and then recorded)."""
        self.validation: Optional[tuple[datasets.Dataset, datasets.Dataset, list[batching.Batch], Any]] = None
        if getattr(self.precision.config, "accuracy_target", None) is None:
            return
        calibrated = self.record.data.calibration
        skip = calibrated.examples if calibrated is not None and calibrated.source == "unscored" else 0
        with self.timer.stage("int8_search"):
            self.validation = self._set_aside(self.precision.config.search.validation,
                                              "precision.search.validation", "validate the int8 search", skip)

    def _set_aside(self, settings: Any, setting: str, purpose: str, skip: int = 0) -> tuple[Any, Any, list[batching.Batch], Any]:
        """(examples, features, batches, record) of the examples `settings` choose (cpueval/calibration.py).
        Held-out examples leave the scored set; the record and a warning say so, as for an overlap."""
        chosen = calibration.choose(settings, OmegaConf.to_object(self.cfg.data), self.examples, load=self._load_prepared,
                                    ids_of=lambda d: [str(i) for i in d["id"]], setting=setting, skip=skip)
        chosen_fp = fingerprint(chosen.examples)
        features, _ = tokenize_cached(self.task, chosen.examples, chosen_fp, self.loaded.tokenizer,
                                      self.loaded.identity["tokenizer_sha256"], self.rt.cache_dir)
        batches = make_batches(features, self.loaded.tokenizer, self.task, self.rt)
        count = chosen.info["examples"]
        if chosen.info["left_out_of_scoring"]:
            self.examples, self.examples_fp = chosen.scored, fingerprint(chosen.scored)
            self.record.data.num_examples, self.record.data.fingerprint = len(self.examples), self.examples_fp
            self.record.warnings.append(f"{count} examples {purpose} and were left out of scoring "
                                        f"({setting}.source=held_out): compare with other jobs carefully")
        if chosen.info["overlaps_scored"]:
            self.record.warnings.append(f"{count} of the scored examples also {purpose} ({setting}.source=scored)")
        return chosen.examples, features, batches, records.CalibrationInfo(**chosen.info, fingerprint=chosen_fp)

    def _load_prepared(self, data_config: Any) -> datasets.Dataset:
        examples, source = load_examples(data_config)
        require_columns(examples, self.task.required_columns, source)
        return self.task.prepare_examples(examples, source)

    def tokenize(self) -> None:
        with self.timer.stage("tokenize"):
            self.features, cache = tokenize_cached(self.task, self.examples, self.examples_fp, self.loaded.tokenizer,
                                                   self.loaded.identity["tokenizer_sha256"], self.rt.cache_dir)
        self.record.data.num_features, self.record.data.feature_cache = len(self.features), cache
        self.record.task_stats = self.task.task_stats(self.examples, self.features)

    def make_batches(self) -> None:
        with self.timer.stage("batching"):
            self.batches = make_batches(self.features, self.loaded.tokenizer, self.task, self.rt,
                                        one_request_at_a_time=self.rt.scenario == Scenario.latency)
        self.real_tokens = int(sum(np.count_nonzero(b.inputs["attention_mask"].numpy()) for b in self.batches))
        data = self.record.data
        data.num_batches, data.real_tokens = len(self.batches), self.real_tokens
        data.padding_share = batching.padding_share(self.batches)

    def search_int8(self) -> None:
        if self.validation is None:
            return
        with self.timer.stage("int8_search"):
            quantizer = self.mode.layer_quantizer(self.loaded.model, self.precision, self.prepare_context(self.batches[0].inputs))
            if quantizer is None:
                raise UserError(f"mode={self.mode.name} precision={self.precision.name} cannot leave chosen layers in "
                                f"fp32: set precision.accuracy_target=null (or use another mode)")
            self.record.int8_search = search_int8(self, quantizer)
        info = self.record.int8_search
        self.precision.config.skip_modules = [*self.precision.config.skip_modules, *info.fp32_layers]
        int8_search.write_result(self.run_dir, self.precision.config.skip_modules, {
            "met_target": info.met_target, "metric": info.metric, "evaluations": info.evaluations,
            "seconds": round(info.seconds, 1), "cache_key": info.cache_key})
        log.info("int8 search (%s): %d layer(s) fp32, target %s; pass back: %s", info.cache, len(info.fp32_layers),
                 "met" if info.met_target else "NOT met", info.overrides)
        if not info.met_target:
            self.record.warnings.append(f"int8 search: precision.accuracy_target={info.accuracy_target} not met "
                                        f"({info.stopped}); the most accurate configuration tried runs")

    @property
    def cache_dir(self) -> Optional[Path]:
        """runtime.cache_dir expanded (None: caches off)."""
        return Path(self.rt.cache_dir).expanduser() if self.rt.cache_dir else None

    def prepare_context(self, example: Any) -> PrepareContext:
        rt = self.rt
        return PrepareContext(example=example, cache_dir=self.cache_dir,
                              model_sha256=self.loaded.identity["weights_sha256"], calibration=self.calibration,
                              intra_op_threads=self.record.threads.intra_op_threads, inter_op_threads=rt.inter_op_threads)

    def prepare(self) -> None:
        self.reference = copy.deepcopy(self.loaded.model) if self.rt.parity_batches > 0 else None
        if self.core_sets:
            return  # each instance prepares its own
        with self.timer.stage("prepare"):
            self.prepared: PreparedModel = prepare_model(self.loaded.model, self.mode, self.precision,
                                                         self.prepare_context(self.batches[0].inputs))

    def warm_up(self) -> None:
        if not self.core_sets:
            with self.timer.stage("warmup"):
                warm_up(self.prepared, self.batches, self.rt.warmup_batches)

    def timed_loop(self) -> None:
        if self.core_sets:
            self.loop = self.run_instances()
        else:
            self.loop = forward_loop(self.prepared, self.batches, self.task, len(self.features), self.rt.progress)
        self.timer.seconds["forward_loop"] = self.loop.seconds

    def run_instances(self) -> LoopResult:
        """Shard the batches, run them in the instances, merge; the record gets each instance's figures."""
        shards = instances.shard(self.batches, len(self.core_sets))
        config = copy.deepcopy(self.cfg)
        OmegaConf.resolve(config)  # the workers see the values this process resolved (env, resolvers)
        if self.record.int8_search is not None:  # the layers the search kept in fp32, not a search per instance
            config.precision.skip_modules = list(self.precision.config.skip_modules)
            config.precision.accuracy_target = None
        launched_at = time.perf_counter()
        jobs = [instances.InstanceJob(index=i, cores=cores, config=config, context=self.prepare_context(
                    self.batches[shard[0]].inputs), batch_numbers=shard, batches=[self.batches[n] for n in shard],
                    num_features=len(self.features), launched_at=launched_at)
                for i, (cores, shard) in enumerate(zip(self.core_sets, shards))]
        self.loaded.model = None  # type: ignore[assignment]  # each instance loads its own: no idle copy here
        results = instances.run_instances(jobs)
        timer = self.timer.seconds
        timer["instance_start"] = max(r.ready_s for r in results)
        timer["prepare"], timer["warmup"] = max(r.prepare_s for r in results), max(r.warmup_s for r in results)
        self.record.instances = [instance_record(r, sum(int(self.batches[n].lengths.sum()) for n in r.batch_numbers),
                                                 launched_at) for r in results]
        self.instance_facts = results[0].prepared  # they all prepared alike
        return merge_instances(results, len(self.features), len(self.batches))

    def compare_parity(self) -> None:
        if self.reference is None:
            return
        with self.timer.stage("parity"):
            self.record.parity = parity_check(self.reference, self.prepared, self.batches, self.task,
                                              self.rt.parity_batches, self.rt.seed)
        self.reference = None

    def postprocess(self) -> None:
        with self.timer.stage("postprocess"):
            self.predictions: Predictions = self.task.postprocess(self.examples, self.features, self.loop.per_feature)

    def score(self) -> None:
        with self.timer.stage("metrics"):
            self.record.metrics = self.task.compute_metrics(self.examples, self.predictions)
        self.record.headline_metrics = list(self.task.headline_metrics())

    def write_outputs(self) -> None:
        files = self.task.write_predictions(self.examples, self.predictions, self.run_dir)
        record, loop, facts = self.record, self.loop, self.prepared_facts()
        record.actual = Actual(mode=facts["mode"], precision=self.precision.name,
                               max_seq_length=self.task.config.max_seq_length,
                               attn_implementation=self.loaded.identity["attn_implementation"],
                               details=facts["details"], precision_details=facts["precision_details"])
        record.latency_ms = Latency(**latency_summary(loop.latencies_s))
        record.batch_latencies_ms = [round(s * 1000.0, 3) for s in loop.latencies_s]
        record.shapes = {"distinct": len(loop.shapes), **facts["stats"]}
        record.files = [p.name for p in files]
        record.status = "ok"
        self.finish((len(self.examples), len(self.features), self.real_tokens, loop.seconds))
        write_json_atomic(self.run_dir / "eval_results.json", hf_eval_results(self.task, record))

    def prepared_facts(self) -> dict[str, Any]:
        """What ran: from this process's prepared model, or the first instance's (they all prepare alike)."""
        if self.core_sets:
            return self.instance_facts
        prepared = self.prepared
        return {"mode": prepared.mode, "details": prepared.details, "stats": prepared.stats(),
                "precision_details": prepared.precision_details or self.precision.details()}

    # -- ending -------------------------------------------------------------------------------------
    def fail(self, status: str, error: BaseException) -> None:
        self.record.status = status  # type: ignore[assignment]
        self.record.error = ErrorInfo(type=type(error).__name__, message=str(error))
        try:
            self.finish()
        except OSError as err:  # the record went in place (finish); the error being raised says more
            log.error("results.json could not be written atomically: %s", err)

    def finish(self, counts: Optional[tuple[int, int, int, float]] = None) -> None:
        """Close the record (timing, memory, and throughput from `counts` = examples, features,
        real tokens, loop seconds) and write it in one atomic step."""
        self.record.finished_at = now()
        self.record.timing = Timing(**self.timer.seconds, total=time.perf_counter() - self._t0)
        if counts is not None:
            self.record.throughput = throughput(self.record.timing.total, *counts)
        self.record.memory = Memory(peak_rss_mb=self._rss.stop(), process_peak_rss_mb=peak_rss_mb())
        try:
            records.save(self.record)
        except OSError as err:  # e.g. a full disk: never leave results.json saying "running" (or "ok")
            if self.record.status in ("ok", "running"):
                self.record.status = "failed"
                self.record.error = ErrorInfo(type=type(err).__name__, message=f"results.json not written: {err}")
            overwrite_in_place(self.run_dir / records.RESULTS_FILE, records.to_dict(self.record))
            raise


def overwrite_in_place(path: Path, data: dict[str, Any]) -> None:
    """Last resort when the atomic write failed (full disk): truncating the old file frees its blocks
    for the new content, written compact."""
    try:
        with path.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps(records.jsonable(data), separators=(",", ":"), ensure_ascii=False) + "\n")
    except OSError as err:
        log.error("%s could not be written either: %s", path, err)


def search_int8(run: Run, quantizer: Any) -> records.Int8SearchInfo:
    """The search for `run`'s int8 (cpueval/int8_search.py), from the cache when it ran before on the same
    model, settings, calibration batches and validation slice; what it found, as recorded."""
    config = run.precision.config
    examples, features, batches, validation = run.validation
    metric = int8_search.gate_metric(run.task.headline_metrics(), config.search.metric)

    def evaluate(forward: Any) -> int8_search.Evaluation:
        loop = forward_loop(PreparedModel(forward=forward, mode="int8_search"), batches, run.task, len(features),
                            progress=False)
        metrics = run.task.compute_metrics(examples, run.task.postprocess(examples, features, loop.per_feature))
        return int8_search.Evaluation(metric=float(metrics[metric]), forward_seconds=loop.seconds)

    material = {"model": {k: run.loaded.identity[k] for k in ("weights_sha256", "config_sha256")},
                "task": OmegaConf.to_container(run.cfg.task, resolve=True), "metric": metric,
                "calibration": tensors_digest(run.calibration or []), "validation": tensors_digest(b.inputs for b in batches)}
    result, cache, key = int8_search.find(quantizer, _eager_fp32(run.loaded.model), run.calibration or [], evaluate,
                                          config.accuracy_target, config.search, run.cache_dir, material)
    steps = [records.SearchStep(**vars(step)) for step in result.steps]
    return records.Int8SearchInfo(
        accuracy_target=config.accuracy_target, metric=metric, reference_metric=result.reference_metric,
        reference_forward_seconds=result.reference_forward_seconds, validation=validation,
        fp32_layers=result.fp32_layers, met_target=result.met_target, stopped=result.stopped,
        evaluations=result.evaluations, seconds=result.seconds, cache=cache, cache_key=key,
        overrides=" ".join(f"'{o}'" for o in int8_search.overrides([*config.skip_modules, *result.fp32_layers])),
        ranking=result.ranking, steps=steps)


def _eager_fp32(model: torch.nn.Module) -> Any:
    def forward(inputs: Any) -> dict[str, torch.Tensor]:
        with torch.inference_mode():
            return {k: v.float() for k, v in model(**inputs).items() if isinstance(v, torch.Tensor)}

    return forward


def add_plugin_facts(env: records.Environment, packages: Sequence[str], caps: Any) -> None:
    """Complete the environment block described when the run started: the versions of the packages the
    job's plug-ins require (None where missing), and which precisions run natively here (from the
    precisions' own declarations)."""
    env.versions.update({name: package_version(name) for name in packages})
    env.native_precisions = {name: plugins.info("precision", name).load_class().is_native(caps)
                             for name in plugins.names("precision")}


def throughput(total: float, examples: int, features: int, tokens: int, loop_s: float) -> Throughput:
    return Throughput(
        forward_examples_per_s=per_second(examples, loop_s),
        forward_features_per_s=per_second(features, loop_s),
        forward_tokens_per_s=per_second(tokens, loop_s),
        e2e_examples_per_s=per_second(examples, total),
        e2e_features_per_s=per_second(features, total),
    )


def hf_eval_results(task: Task, record: RunRecord) -> dict[str, Any]:
    """eval_results.json as transformers' run_qa.py wrote it: eval_samples counts features (windows)
    and eval_runtime covers prediction + post-processing + metrics, as Trainer.evaluate timed it."""
    timing, data = record.timing, record.data
    runtime = timing.forward_loop + timing.postprocess + timing.metrics
    return {**task.hf_eval_results(record.metrics), "eval_samples": data.num_features,
            "eval_runtime": round(runtime, 4), "eval_samples_per_second": round(data.num_features / runtime, 3),
            "eval_examples": data.num_examples}


def execute(cfg: DictConfig, run_dir: Path) -> RunRecord:
    """Run one job and always leave a complete results.json, whatever happens."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UserError(f"no value for {', '.join(missing)}: set it on the command line, e.g. {missing[0]}=<value>")
    run = Run(cfg, run_dir)
    try:
        return run.execute()
    except OSError as err:
        problem = os_error_as_user_error(err, cfg, run_dir)
        run.fail("failed", problem or err)
        if problem is None:
            raise
        raise problem from None
    except Refused as err:
        run.fail("refused", err)
        raise
    except KeyboardInterrupt as err:
        run.fail("interrupted", err)
        raise
    except Exception as err:  # UserError or a bug: either way the record says failed, and why
        run.fail("failed", err)
        raise
