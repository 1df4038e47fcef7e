"""Benchmark: eager PyTorch against ONNX Runtime and OpenVINO on real SQuAD batches, round-robin.

Sweeps time one job after another, so load from other processes on a shared machine lands on some jobs
and not on others. Here every combination is prepared first (as the pipeline does: check, convert
unless the mode implements the precision, prepare), then the loop's batches go round-robin: each batch
through every combination in turn, `--reps` times, so load hits all of them alike. Reported: the
forward time per pass over the batches (median over reps), the ratio to eager fp32, preparation seconds,
and parity with eager fp32 (max |logit difference|, share of identical argmax).

Calibrated int8 (openvino, onnxruntime static) calibrates on dev questions after the scored ones.

    .venv/bin/python jobs/bench_runtimes.py                       # minilm-squad, first 200 dev questions
    .venv/bin/python jobs/bench_runtimes.py --questions 100 --only eager:fp32 openvino:fp32
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings
from typing import Any

import torch
from hydra import compose, initialize_config_dir

from cpueval import plugins
from cpueval.app import CONF_DIR
from cpueval.config import register_configs
from cpueval.data import load_examples
from cpueval.environment import describe_environment, detect_capabilities
from cpueval.models import load_model
from cpueval.modes._common import create_mode
from cpueval.modes.base import PrepareContext
from cpueval.parity import compare_outputs
from cpueval.pipeline import configure_threads, make_batches, prepare_model
from cpueval.precisions import create_precision

# mode:precision[:mode option=value]
COMBOS = ["eager:fp32", "compile:fp32", "eager:int8", "onnxruntime:fp32", "onnxruntime:int8", "onnxruntime:int8:int8=static",
          "openvino:fp32", "openvino:int8"]


def batches_of(cfg: Any, task: Any, tokenizer: Any, first: int, count: int) -> list[dict[str, torch.Tensor]]:
    examples, source = load_examples(cfg.data)
    examples = task.prepare_examples(examples.select(range(first, first + count)), source)
    return [b.inputs for b in make_batches(task.tokenize(examples, tokenizer), tokenizer, task, cfg.runtime)]


def prepare(combo: str, loaded: Any, ctx: PrepareContext) -> dict[str, Any]:
    mode_name, precision_name, *option = combo.split(":")
    fields = dict(o.split("=", 1) for o in option)
    mode, precision = create_mode(mode_name, **fields), create_precision(precision_name)
    plugins.check_together(detect_capabilities(), mode, precision)
    model = copy.deepcopy(loaded.model)
    start = time.perf_counter()
    prepared = prepare_model(model, mode, precision, ctx)
    return {"combo": combo, "prepared": prepared, "prepare_s": time.perf_counter() - start, "passes": []}


def run_round(results: list[dict[str, Any]], batches: list[dict[str, torch.Tensor]]) -> None:
    spent = {r["combo"]: 0.0 for r in results}
    for batch in batches:
        for result in results:
            start = time.perf_counter()
            outputs = result["prepared"].forward(batch)
            spent[result["combo"]] += time.perf_counter() - start
            if not result["passes"]:  # the first round's outputs, for parity
                result.setdefault("outputs", []).append(outputs)
    for result in results:
        result["passes"].append(spent[result["combo"]])


def table(results: list[dict[str, Any]], reference: list[Any], lengths: list[list[int]]) -> str:
    base = statistics.median(results[0]["passes"])
    lines = [f"{'mode:precision':32s} {'pass s':>7s} {'speed-up':>8s} {'prep s':>7s} {'max|diff|':>9s} {'same':>5s}"]
    for r in results:
        parity = compare_outputs(reference, r["outputs"], lengths)
        seconds = statistics.median(r["passes"])
        lines.append(f"{r['combo']:32s} {seconds:7.2f} {base / seconds:8.2f} {r['prepare_s']:7.1f} "
                     f"{parity['max_abs_diff']:9.1e} {parity['identical_predictions']:5.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--calibration", type=int, default=128, help="dev questions to calibrate static int8 on")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", nargs="+", default=COMBOS, help="mode:precision[:option=value]; the first is the base")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=minilm_squad", "data=squad_v1_dev", "data.max_eval_samples=null"])
    threads = configure_threads(cfg.runtime)
    task = plugins.build(cfg.task)
    loaded = load_model(cfg.model, task, cfg.runtime.cache_dir)
    batches = batches_of(cfg, task, loaded.tokenizer, 0, args.questions)
    ctx = PrepareContext(example=batches[0], cache_dir=None, model_sha256=loaded.identity["weights_sha256"],
                         intra_op_threads=threads.intra_op_threads,
                         calibration=batches_of(cfg, task, loaded.tokenizer, 2000, args.calibration))
    results = [prepare(combo, loaded, ctx) for combo in args.only]
    for _ in range(args.reps):
        run_round(results, batches)
    with torch.inference_mode():
        reference = [{k: v for k, v in loaded.model(**b).items() if isinstance(v, torch.Tensor)} for b in batches]
    env = describe_environment()
    print(f"# {env['cpu_model']}, {threads.intra_op_threads} threads, torch {torch.__version__}, minilm-squad, "
          f"{args.questions} questions ({len(batches)} batches), {args.reps} reps, load {os.getloadavg()[0]:.1f}")
    print(table(results, reference, [b["attention_mask"].sum(1).tolist() for b in batches]))


if __name__ == "__main__":
    main()
