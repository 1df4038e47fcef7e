"""Benchmark: dynamic padding + length bucketing against classic pad_to_max_length, in one process.

    python jobs/bench_padding.py                       # minilm-squad, first 2,000 dev-v1.1 questions
    python jobs/bench_padding.py data.max_eval_samples=500 model=tiny_random data=squad_sample

Both variants run on the same examples, model and threads, one after the other in this process
(padded first, so the dynamic run cannot profit from a warmer cache), and the table shows forward-loop
throughput, the ratio, padding computed, and EM/F1 of both. Results land in outputs/bench_padding/.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from cpueval.app import CONF_DIR
from cpueval.config import register_configs
from cpueval.pipeline import execute

DEFAULTS = ["model=minilm_squad", "data=squad_v1_dev", "data.max_eval_samples=2000", "runtime.progress=false"]
VARIANTS = {"pad_to_max_length": ["task.pad_to_max_length=true"], "dynamic+bucketing": []}


def main(extra: list[str]) -> None:
    register_configs()
    out = Path("outputs/bench_padding") / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    records = {}
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name, overrides in VARIANTS.items():
            cfg = compose("config", overrides=[*DEFAULTS, *extra, *overrides])
            print(f"running {name} ...", file=sys.stderr, flush=True)
            records[name] = execute(cfg, out / name.replace("+", "_"))
    dynamic, fixed = records["dynamic+bucketing"], records["pad_to_max_length"]
    headline, base = dynamic.headline_metrics, fixed.throughput.forward_examples_per_s
    print(f"\n{dynamic.environment.cpu_model}, {dynamic.threads.intra_op_threads} threads, "
          f"{dynamic.data.num_examples} examples")
    print(f"| variant | forward examples/s | ratio | padding computed | {' | '.join(headline)} |")
    print("|---|---|---|---|" + "---|" * len(headline))
    for name, record in records.items():
        speed = record.throughput.forward_examples_per_s
        metrics = " | ".join(f"{record.metrics[m]:.2f}" for m in headline)
        print(f"| {name} | {speed:.2f} | {speed / base:.2f}x | {record.data.padding_share * 100:.1f}% | {metrics} |")
    print(f"\nrecords: {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
