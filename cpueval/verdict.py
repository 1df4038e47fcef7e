"""The deployment answer of a report: per (model, task, data, CPU, scenario), which configuration to run.

Candidates are the report's ok rows whose accuracy gate (cpueval.report) says `pass` or `baseline`;
failed, refused, gate-failing rows and rows with no baseline to gate against never win. Among them the
fastest wins: highest forward examples/s in the throughput scenario, lowest p90 per-request latency
in the latency scenario (MLPerf single-stream's figure). Speed-ups are given over the fastest eager
fp32 row of the group (the reference mode and precision, any batch size, threads or instances) and
over the fastest fp32 row of any mode. The preparation cost is what the winner paid before its
first timed batch: calibration + the instances' start-up (runtime.instances > 1) + prepare + warm-up.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import pandas as pd

GROUP = ("model", "task", "data", "max_eval_samples", "cpu_model", "scenario")
WINNING_GATES = ("pass", "baseline")


def _number(value: Any) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _whole(value: Any) -> Optional[int]:
    number = _number(value)
    return None if number is None else int(number)


def speed(row: Mapping[str, Any]) -> Optional[float]:
    """Higher is faster: forward examples/s, or 1 / p90 request latency (ms) in the latency scenario."""
    if row.get("scenario") == "latency":
        p90 = _number(row.get("latency_p90_ms"))
        return 1.0 / p90 if p90 else None
    return _number(row.get("fwd_examples_s"))


def preparation_seconds(row: Mapping[str, Any]) -> Optional[float]:
    parts = [_number(row.get(c)) for c in ("calibration_s", "instance_start_s", "prepare_s", "warmup_s")]
    return sum(p for p in parts if p is not None) if any(p is not None for p in parts) else None


def _describe(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"job": row.get("job"), "run_dir": row.get("run_dir"), "mode": row.get("mode"),
            "precision": row.get("precision"), "batch_size": _whole(row.get("batch_size")),
            "threads": _whole(row.get("threads")), "instances": _whole(row.get("instances")),
            "cores_per_instance": _whole(row.get("cores_per_instance")),
            "fwd_examples_s": _number(row.get("fwd_examples_s")),
            "latency_p50_ms": _number(row.get("latency_p50_ms")), "latency_p90_ms": _number(row.get("latency_p90_ms")),
            "latency_p99_ms": _number(row.get("latency_p99_ms")), "gate": row.get("gate"),
            "gate_metric": row.get("gate_metric"), "metric_delta": _number(row.get("metric_delta")),
            "preparation_s": preparation_seconds(row), "e2e_speedup": _number(row.get("e2e_speedup"))}


def _fastest(rows: pd.DataFrame) -> Optional[pd.Series]:
    if rows.empty:
        return None
    return rows.assign(_speed=rows.apply(speed, axis=1)).sort_values("_speed", ascending=False).iloc[0]


def _ratio(row: pd.Series, reference: Optional[pd.Series]) -> Optional[float]:
    mine, theirs = speed(row), speed(reference) if reference is not None else None
    return mine / theirs if mine and theirs else None


def group_verdict(key: Mapping[str, Any], rows: pd.DataFrame, reference_mode: str,
                  reference_precision: str) -> dict[str, Any]:
    """The verdict of one group of report rows."""
    winners = rows[(rows["status"] == "ok") & rows["gate"].isin(WINNING_GATES)]
    winners = winners[winners.apply(speed, axis=1).notna()]
    ranked = winners.assign(_speed=winners.apply(speed, axis=1)).sort_values("_speed", ascending=False)
    fp32 = winners[winners["precision"] == reference_precision]
    eager_fp32 = _fastest(fp32[fp32["mode"] == reference_mode])
    best_fp32 = _fastest(fp32)
    entry: dict[str, Any] = {**{k: key.get(k) for k in GROUP}, "rows": int(len(rows)),
                             "candidates": int(len(ranked)), "excluded": _excluded(rows),
                             "winner": None, "runner_up": None, "speedup_vs_eager_fp32": None,
                             "speedup_vs_best_fp32": None, "eager_fp32": None, "best_fp32": None}
    if ranked.empty:
        return entry
    winner = ranked.iloc[0]
    entry.update(winner=_describe(winner), runner_up=_describe(ranked.iloc[1]) if len(ranked) > 1 else None,
                 speedup_vs_eager_fp32=_ratio(winner, eager_fp32), speedup_vs_best_fp32=_ratio(winner, best_fp32),
                 eager_fp32=eager_fp32["job"] if eager_fp32 is not None else None,
                 best_fp32=best_fp32["job"] if best_fp32 is not None else None)
    return entry


def _excluded(rows: pd.DataFrame) -> dict[str, int]:
    """Why the other rows could not win: status (failed, refused...) or gate (FAIL, no baseline...)."""
    reasons = rows["status"].where(rows["status"] != "ok", rows["gate"].fillna("no gate"))
    reasons = reasons[~((rows["status"] == "ok") & rows["gate"].isin(WINNING_GATES))]
    return {str(k): int(v) for k, v in reasons.value_counts().items()}


def verdicts(df: pd.DataFrame, reference_mode: str, reference_precision: str) -> list[dict[str, Any]]:
    """One verdict per group of the report table (which has the gate columns of cpueval.report)."""
    table = df.copy()
    for column in GROUP:  # comparable keys: text, "-" for missing
        table[column] = table[column].map(_key) if column in table else "-"
    table = table[table["status"] != "unreadable"]
    return [group_verdict(dict(zip(GROUP, key)), rows, reference_mode, reference_precision)
            for key, rows in table.groupby(list(GROUP), sort=True, dropna=False)]


def _key(value: Any) -> str:
    number = _number(value) if not isinstance(value, str) else None
    if number is not None:
        return str(int(number)) if number.is_integer() else str(number)
    return "-" if value is None or (isinstance(value, float) and value != value) else str(value)


def _config(entry: Mapping[str, Any]) -> str:
    parts = [f"{entry['mode']}/{entry['precision']}", f"bs={_int(entry['batch_size'])}"]
    instances = entry.get("instances") or 1
    if instances > 1:
        parts.append(f"{_int(instances)}×{_int(entry.get('cores_per_instance'))} cores")
    else:
        parts.append(f"{_int(entry['threads'])} threads")
    return " ".join(parts)


def _int(value: Any) -> str:
    return "-" if value is None else str(int(value))


def _figure(entry: Mapping[str, Any], scenario: str) -> str:
    if scenario == "latency":
        return (f"p90 {_num(entry['latency_p90_ms'])} ms (p50 {_num(entry['latency_p50_ms'])}, "
                f"p99 {_num(entry['latency_p99_ms'])})")
    return f"{_num(entry['fwd_examples_s'])} ex/s"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:,.{2 if abs(value) < 10 else 1 if abs(value) < 100 else 0}f}"


def _times(value: Any) -> str:
    return "-" if value is None else f"×{value:.2f}"


def line(entry: Mapping[str, Any]) -> str:
    """One verdict as one line of text."""
    model = str(entry["model"]).rstrip("/").split("/")[-1]
    sample = "" if entry["max_eval_samples"] == "-" else f" (first {entry['max_eval_samples']})"
    head = f"{model} {entry['task']} {entry['data']}{sample} | {entry['cpu_model']} | {entry['scenario']}: "
    excluded = ", ".join(f"{n} {why}" for why, n in entry["excluded"].items())
    tail = f" [{entry['candidates']} of {entry['rows']} rows could win" + (f"; {excluded}" if excluded else "") + "]"
    winner = entry["winner"]
    if winner is None:
        return head + "no configuration passes the accuracy gate" + tail
    scenario = entry["scenario"]
    text = (f"{_config(winner)} {_figure(winner, scenario)}, {_times(entry['speedup_vs_eager_fp32'])} vs eager fp32, "
            f"{_times(entry['speedup_vs_best_fp32'])} vs best fp32, prep {_num(winner['preparation_s'])} s")
    runner = entry["runner_up"]
    text += f"; runner-up {_config(runner)} {_figure(runner, scenario)}" if runner else "; no runner-up"
    return head + text + tail
