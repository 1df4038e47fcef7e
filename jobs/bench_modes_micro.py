"""Micro-benchmark: forward latency of every mode x precision on a random BERT, on this CPU.

It goes through cpueval's own modes and precisions (check -> convert -> prepare -> forward), the
path the pipeline times, on one fixed batch. Every combination is prepared and warmed up first,
then the timed calls go round-robin (one call per combination per round), so load from other
processes hits all of them alike; it reports the median wall time and the median process CPU
time per call (CPU time / threads is close to the idle-machine wall time when the machine is
shared). Outputs are compared with eager fp32 (cpueval.parity).

Caveat for compile:* rows: each compile prepare resets dynamo (one model per job in cpueval), so
a compile combination prepared earlier recompiles on its first timed call here; use --reps 5 or
more (the median drops it), or measure compile combinations one per process with --only. Their
recompiles are in the --json output (stats).

Combinations are mode:precision[:field=value,...] (fields of the precision's config); the default is
every registered mode x precision (cpueval.plugins), refused ones listed with their reason.

    .venv/bin/python jobs/bench_modes_micro.py                 # bert-base (BertConfig defaults), 8x384
    .venv/bin/python jobs/bench_modes_micro.py --layers 2 --reps 3 --only eager:fp32 jit:fp32 eager:bf16:weights=cast
    .venv/bin/python jobs/bench_modes_micro.py --unchecked --only eager:int8:backend=torchao   # a refused pair
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from typing import Any

import torch

from cpueval import plugins
from cpueval.environment import describe_environment, detect_capabilities, usable_cores
from cpueval.errors import Refused
from cpueval.modes.base import PrepareContext
from cpueval.parity import compare_outputs
from cpueval.pipeline import prepare_model
from cpueval.precisions.base import Precision

DEFAULT_COMBOS = [f"{m}:{p}" for m in plugins.names("mode") for p in plugins.names("precision")]
REFERENCE = f"{plugins.names('mode')[0]}:{plugins.names('precision')[0]}"  # eager:fp32


def make_precision(name: str, options: list[str]) -> Precision:
    fields = dict(option.split("=", 1) for option in ",".join(options).split(",") if option)
    return plugins.create("precision", name, **fields)  # type: ignore[return-value]


def build_model(layers: int) -> torch.nn.Module:
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    return BertForQuestionAnswering(BertConfig(num_hidden_layers=layers)).eval()


def make_inputs(batch: int, length: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(1000, 30000, (batch, length), generator=g),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
    }


def prepare_combo(combo: str, base: torch.nn.Module, inputs: dict, args: argparse.Namespace) -> dict[str, Any]:
    mode_name, prec_name, *options = combo.split(":")
    precision, mode = make_precision(prec_name, options), plugins.create("mode", mode_name)
    try:
        plugins.check_together(detect_capabilities(), mode, precision)
    except Refused as refused:
        if not args.unchecked:
            return {"combo": combo, "refused": str(refused)}
    start = time.perf_counter()
    model = copy.deepcopy(base)
    prepared = prepare_model(model, mode, precision, PrepareContext(example=inputs, intra_op_threads=args.threads))
    prepare_s = time.perf_counter() - start
    for _ in range(args.warmup):
        outputs = prepared.forward(inputs)
    return {"combo": combo, "mode": prepared.mode, "prepare_s": prepare_s, "warnings": precision.warnings,
            "prepared": prepared, "outputs": outputs, "wall": [], "cpu": []}


def time_call(result: dict[str, Any], inputs: dict) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    result["prepared"].forward(inputs)
    result["cpu"].append(time.process_time() - cpu)
    result["wall"].append(time.perf_counter() - wall)


def summarize(result: dict[str, Any], reference: Any) -> None:
    result["stats"] = result.pop("prepared").stats()
    result["median_ms"] = 1000 * statistics.median(result.pop("wall"))
    result["cpu_ms"] = 1000 * statistics.median(result.pop("cpu"))
    parity = compare_outputs([reference], [result.pop("outputs")])
    result.update(max_abs_diff=parity["max_abs_diff"], identical=parity["identical_predictions"])


def table(results: list[dict[str, Any]]) -> str:
    base = next((r for r in results if r["combo"] == REFERENCE and "median_ms" in r), None)
    lines = [f"{'mode:precision':22s} {'wall ms':>8s} {'ratio':>6s} {'cpu ms':>8s} {'ratio':>6s} {'prep s':>7s} "
             f"{'max|diff|':>9s} {'argmax=':>7s}"]
    for r in results:
        if "refused" in r:
            lines.append(f"{r['combo']:22s} refused: {r['refused']}")
            continue
        wall = f"{r['median_ms'] / base['median_ms']:.2f}" if base else "-"
        cpu = f"{r['cpu_ms'] / base['cpu_ms']:.2f}" if base else "-"
        lines.append(f"{r['combo']:22s} {r['median_ms']:8.0f} {wall:>6s} {r['cpu_ms']:8.0f} {cpu:>6s} "
                     f"{r['prepare_s']:7.1f} {r['max_abs_diff']:9.1e} {r['identical']:7.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=384)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--only", nargs="+", help="combinations mode:precision[:field=value,...] (default: every "
                        "registered pair); ratios and parity are against eager:fp32, or the first one if it is absent")
    parser.add_argument("--unchecked", action="store_true", help="measure refused combinations anyway (if they run)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    combos = args.only or DEFAULT_COMBOS
    if REFERENCE in combos:  # the reference for ratios and parity: prepared first
        combos = [REFERENCE] + [c for c in combos if c != REFERENCE]
    env = describe_environment()
    print(f"# {env['cpu_model']}, {args.threads} threads, torch {torch.__version__}, "
          f"BERT {args.layers} layers, batch {args.batch}x{args.length}, load {os.getloadavg()[0]:.1f}", flush=True)
    base, inputs = build_model(args.layers), make_inputs(args.batch, args.length)
    results = []
    for combo in combos:
        try:
            results.append(prepare_combo(combo, base, inputs, args))
        except Exception as error:  # report and go on: one broken pair must not hide the others
            results.append({"combo": combo, "refused": f"FAILED {type(error).__name__}: {str(error).splitlines()[0][:200]}"})
        last = results[-1]
        print(f"prepared {combo}: " + (last["refused"] if "refused" in last else f"{last['prepare_s']:.1f} s"), flush=True)
    running = [r for r in results if "prepared" in r]
    for round_ in range(args.reps):
        for result in running:
            time_call(result, inputs)
        print(f"round {round_ + 1}/{args.reps} done, load {os.getloadavg()[0]:.1f}", flush=True)
    reference = next((r["outputs"] for r in running if r["combo"] == REFERENCE), running[0]["outputs"])
    for result in running:
        summarize(result, reference)
    print(f"\n# load average at the end: {os.getloadavg()[0]:.1f}\n{table(results)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "environment": env, "results": results}, f, indent=2, default=str)


if __name__ == "__main__":
    sys.exit(main())
