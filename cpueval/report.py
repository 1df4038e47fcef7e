"""`cpueval report DIR... [--out DIR] [--baseline mode=eager,precision=fp32] [--gate 0.99]`

One table over any set of run and sweep directories (scanned recursively for results.json, so
directories copied together from several machines work too): a row per job with its config
axes, status and reason, headline metrics, throughput, latency, preparation time, memory, CPU and
feature-cache hit; each ok row is compared with its baseline row (speed-up, metric delta) and
passes an accuracy gate or not. Written as table.csv, table.parquet and report.md (Markdown for
terminals and GitHub), with throughput.png and latency.png (and scaling.png when batch size or
threads vary) linked from it.

Baseline of a row: the ok row that matches --baseline (default eager fp32) and is otherwise the
same job: same config once the baseline's keys (mode, precision), the data location and the
settings that do not change results are left out, same data content (fingerprint), same CPU model
and same number of threads. Among several (one job run on two hosts), the one from the same host,
then the latest. Gate: gate metric >= gate x baseline's (MLPerf's 99% rule); the gate metric is f1
when the task reports it, else its first headline metric (--gate-metric to choose).

On top, the verdict (cpueval/verdict.py, verdict.json): per model, task, data, CPU and scenario, the
fastest configuration that passes the gate and the runner-up; `--verdict` prints only that.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import pandas as pd

from cpueval import plugins, verdict
from cpueval.identity import digest, job_config, job_hash
from cpueval.records import RESULTS_FILE, RunRecord, jsonable, read_record

def default_baseline() -> str:
    """The reference mode and precision (cpueval.plugins.reference): "mode=eager,precision=fp32"."""
    return f"mode={plugins.reference('mode')},precision={plugins.reference('precision')}"



DEFAULT_GATE = 0.99
# Left out of a row's identity when looking for its baseline (beyond identity.NOT_IN_HASH): naming only.
NOT_IDENTITY = ("experiment_name", "note")
KEY_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
MAX_FACETS = 12
MAX_BOXES = 40


# -- collecting -----------------------------------------------------------------------------------
def find_records(dirs: Iterable[Path]) -> list[tuple[Path, Optional[RunRecord]]]:
    """(run dir, record or None if unreadable) for every results.json under the given dirs, each run once.
    Records of every schema version load (cpueval.records.migrate)."""
    seen: dict[Path, Optional[RunRecord]] = {}
    for root in map(Path, dirs):
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such directory")
        paths = [root / RESULTS_FILE] if (root / RESULTS_FILE).is_file() else sorted(root.rglob(RESULTS_FILE))
        for path in paths:
            if ".submitit" in path.parts or path.parent.resolve() in seen:
                continue
            seen[path.parent.resolve()] = read_record(path.parent)
    return sorted(seen.items(), key=lambda item: str(item[0]))


def _get(data: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return default
        data = data[part]
    return data


def _data_label(config: Mapping[str, Any]) -> str:
    data = config.get("data") or {}
    if data.get("name"):
        return f"{data['name']}/{data['subset']}" if data.get("subset") else str(data["name"])
    return Path(str(data.get("path") or "?")).name


def _reason(record: RunRecord) -> Optional[str]:
    if record.error is None:
        return "still running, or killed (no end recorded)" if record.status == "running" else None
    return record.reason


def _attr(obj: Any, name: str) -> Any:
    return getattr(obj, name, None) if obj is not None else None


def flatten(run_dir: Path, record: Optional[RunRecord]) -> dict[str, Any]:
    """One table row from one record (None: an unreadable results.json)."""
    if record is None:
        return {"job": run_dir.name, "status": "unreadable", "reason": "results.json is not a cpueval record",
                "run_dir": str(run_dir), "sweep": run_dir.parent.name}
    config, actual, env, timing = record.config, record.actual, record.environment, record.timing
    tput, lat = record.throughput, record.latency_ms
    row: dict[str, Any] = {
        "job": run_dir.name,
        "experiment": config.get("experiment_name"),
        "model": _get(config, "model.name_or_path"),
        "task": _get(config, "task.name"),
        "data": _data_label(config),
        "max_eval_samples": _get(config, "data.max_eval_samples"),
        "num_examples": _attr(record.data, "num_examples"),
        "mode": record.requested.mode,
        "mode_actual": _attr(actual, "mode"),
        "precision": record.requested.precision,
        "precision_actual": _attr(actual, "precision"),
        # the latency scenario sends one request at a time, whatever runtime.batch_size says
        "batch_size": 1 if _get(config, "runtime.scenario") == "latency" else _get(config, "runtime.batch_size"),
        "scenario": _get(config, "runtime.scenario", "throughput"),
        "instances": len(record.instances) or _get(config, "runtime.instances", 1),
        "cores_per_instance": len(record.instances[0].cores) if record.instances else None,
        "threads": _attr(record.threads, "intra_op_threads") or _get(config, "runtime.intra_op_threads"),
        "attn_implementation": _attr(actual, "attn_implementation") or _attr(record.model, "attn_implementation")
        or _get(config, "model.attn_implementation"),
        "status": record.status,
        "reason": _reason(record),
        "headline_metrics": ",".join(record.headline_metrics),
    }
    for name, value in record.metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[f"metric.{name}"] = float(value)
    row.update({
        "fwd_examples_s": _attr(tput, "forward_examples_per_s"),
        "fwd_features_s": _attr(tput, "forward_features_per_s"),
        "fwd_tokens_s": _attr(tput, "forward_tokens_per_s"),
        "e2e_examples_s": _attr(tput, "e2e_examples_per_s"),
        "latency_p50_ms": _attr(lat, "p50"),
        "latency_p90_ms": _attr(lat, "p90"),
        "latency_p99_ms": _attr(lat, "p99"),
        "latency_p999_ms": _attr(lat, "p999"),
        "calibration_s": _attr(timing, "calibration"),
        "instance_start_s": _attr(timing, "instance_start"),
        "prepare_s": _attr(timing, "prepare"),
        "warmup_s": _attr(timing, "warmup"),
        "forward_loop_s": _attr(timing, "forward_loop"),
        "end_to_end_s": end_to_end_seconds(timing),
        "tokenize_s": _attr(timing, "tokenize"),
        "total_s": _attr(timing, "total"),
        "peak_rss_mb": _attr(record.memory, "peak_rss_mb"),
        "parity_max_abs_diff": _attr(record.parity, "max_abs_diff"),
        "parity_identical": _attr(record.parity, "identical_predictions"),
        "cpu_model": _attr(env, "cpu_model"),
        "cpu_flags": " ".join(f for f in KEY_FLAGS if f in (_attr(env, "isa_flags") or [])),
        "host": _attr(env, "host"),
        "feature_cache": _attr(record.data, "feature_cache"),
        "job_hash": job_hash(config) if config else None,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "run_dir": str(run_dir),
        # the sweep (or run date) a row belongs to: tells two nights' rows apart in one report
        "sweep": run_dir.parent.name,
    })
    return row


def end_to_end_seconds(timing: Any) -> Optional[float]:
    """What answering the examples cost with this configuration: preparation (calibration, the instances'
    start-up, prepare, warm-up) + the forward loop. Loading and tokenizing are left out: they do not depend on the mode
    and a feature-cache hit would otherwise favour whichever job ran second."""
    loop = _attr(timing, "forward_loop")
    if loop is None:
        return None
    return loop + sum(_attr(timing, name) or 0.0 for name in ("calibration", "instance_start", "prepare", "warmup"))


# -- baselines and gate -----------------------------------------------------------------------------
def parse_baseline(spec: str) -> dict[str, str]:
    """"mode=eager,precision=fp32" -> {"mode": "eager", "precision": "fp32"}."""
    pairs = [part.strip().partition("=") for part in (spec or "").split(",") if part.strip()]
    if not pairs or any(not sep or not key.strip() for key, sep, _ in pairs):
        raise ValueError(f"--baseline {spec!r}: expected key=value[,key=value], e.g. {default_baseline()}")
    return {key.strip(): value.strip() for key, _, value in pairs}


def _config_value(config: Mapping[str, Any], key: str) -> Optional[str]:
    """`mode` -> mode.name, `model` -> model.name_or_path, `a.b` -> that value, as a string."""
    value = _get(config, key)
    if isinstance(value, Mapping):
        value = value.get("name", value.get("name_or_path"))
    return None if value is None else str(value)


def baseline_identity(record: Optional[RunRecord], baseline_keys: Iterable[str]) -> str:
    """What a row and its baseline must share: the job identity (cpueval.identity) with the baseline's keys,
    the data location and naming keys left out, the data's content, the CPU model and the thread count."""
    if record is None:
        return ""
    config = job_config(record.config, leave_out=(*NOT_IDENTITY, *baseline_keys))
    if record.data is not None:  # data content, not where it lies on this machine
        config["data"] = {"fingerprint": record.data.fingerprint}
    key = {"config": config, "cpu": _attr(record.environment, "cpu_model"),
           "threads": _attr(record.threads, "intra_op_threads")}
    return digest(key, chars=16)


def gate_metric_for(row: Mapping[str, Any], preferred: Optional[str]) -> Optional[str]:
    names = [n for n in str(row.get("headline_metrics") or "").split(",") if n]
    if preferred:
        return preferred
    return "f1" if "f1" in names else (names[0] if names else None)


def add_baselines(df: pd.DataFrame, records: Sequence[Optional[RunRecord]], baseline: Optional[str] = None,
                  gate: float = DEFAULT_GATE, gate_metric: Optional[str] = None) -> pd.DataFrame:
    """Adds baseline_job, speedup (forward loop), e2e_speedup (preparation included), gate_metric, metric_delta,
    gate (one per row, in df order)."""
    spec = parse_baseline(baseline or default_baseline())
    df = df.copy()
    df["_identity"] = [baseline_identity(r, spec) for r in records]
    df["_is_base"] = [r is not None and all(_config_value(r.config, k) == v for k, v in spec.items()) for r in records]
    candidates = df[df["_is_base"] & (df["status"] == "ok")]
    out = [_compare(row, candidates, gate, gate_metric) for _, row in df.iterrows()]
    for column in ("baseline_job", "speedup", "e2e_speedup", "gate_metric", "metric_delta", "gate"):
        df[column] = [item[column] for item in out]
    return df.drop(columns=["_identity", "_is_base"])


def _compare(row: pd.Series, candidates: pd.DataFrame, gate: float, gate_metric: Optional[str]) -> dict[str, Any]:
    metric = gate_metric_for(row, gate_metric)
    result = {"baseline_job": None, "speedup": None, "e2e_speedup": None, "gate_metric": metric, "metric_delta": None,
              "gate": None}
    if row["status"] != "ok":
        result["gate"] = row["status"]
        return result
    same = candidates[candidates["_identity"] == row["_identity"]]
    if same.empty:
        result["gate"] = "no baseline"
        return result
    base = _pick(same, row.get("host"))
    result["baseline_job"] = base["job"]
    if row.get("fwd_examples_s") and base.get("fwd_examples_s"):
        result["speedup"] = row["fwd_examples_s"] / base["fwd_examples_s"]
    if row.get("end_to_end_s") and base.get("end_to_end_s"):  # same examples: the time ratio is the speed ratio
        result["e2e_speedup"] = base["end_to_end_s"] / row["end_to_end_s"]
    value, reference = row.get(f"metric.{metric}"), base.get(f"metric.{metric}")
    if metric is None or _missing(value) or _missing(reference):
        result["gate"] = "no metric"
        return result
    result["metric_delta"] = value - reference
    if row["run_dir"] == base["run_dir"]:
        result["gate"] = "baseline"
    else:
        result["gate"] = "pass" if value >= gate * reference else "FAIL"
    return result


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _pick(same: pd.DataFrame, host: Any) -> pd.Series:
    """Same host first, then the latest finished."""
    ranked = same.assign(_same_host=same["host"] == host).sort_values(
        ["_same_host", "finished_at"], ascending=[False, False], na_position="last")
    return ranked.iloc[0]


# -- the table -------------------------------------------------------------------------------------
def _order(values: pd.Series, known: Sequence[str]) -> pd.Series:
    return values.map(lambda v: (known.index(v) if v in known else len(known), str(v)))


def build_table(dirs: Iterable[Path], baseline: Optional[str] = None, gate: float = DEFAULT_GATE,
                gate_metric: Optional[str] = None) -> pd.DataFrame:
    found = find_records(dirs)
    if not found:
        raise FileNotFoundError("no results.json under " + ", ".join(map(str, dirs)))
    records = [record for _, record in found]
    df = pd.DataFrame([flatten(run_dir, record) for run_dir, record in found])
    df = add_baselines(df, records, baseline, gate, gate_metric)
    df["_records"] = records  # carried for the plots, dropped before writing
    sort_keys = ["model", "task", "data", "batch_size", "threads", "mode", "precision", "host", "job"]
    order = {"mode": plugins.names("mode"), "precision": plugins.names("precision")}  # the plug-ins' own order
    df = df.sort_values(sort_keys, key=lambda col: _order(col, order.get(str(col.name), ())),
                        na_position="last").reset_index(drop=True)
    return df


def _fmt(value: Any, digits: int = 1) -> str:
    if _missing(value):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _num(value: Any) -> str:
    """About three significant digits: 0.213, 4.35, 43.5, 4,352."""
    if _missing(value):
        return "-"
    magnitude = abs(value)
    return f"{value:,.{3 if magnitude < 1 else 2 if magnitude < 10 else 1 if magnitude < 100 else 0}f}"


def _int(value: Any) -> str:
    return "-" if _missing(value) else str(int(value))


def _signed(value: Any, digits: int = 2) -> str:
    return "-" if _missing(value) else f"{value:+.{digits}f}"


def _mode_label(row: Mapping[str, Any]) -> str:
    actual = row.get("mode_actual")
    fell_back = not _missing(actual) and actual and actual != row["mode"]
    return f"{row['mode']}→{actual}" if fell_back else str(row["mode"])


def _instances_label(row: Mapping[str, Any]) -> str:
    count = row.get("instances")
    if _missing(count) or int(count) <= 1:
        return "1"
    return f"{int(count)}×{_int(row.get('cores_per_instance'))}"


def markdown(df: pd.DataFrame, gate: float, baseline: str, plots: Sequence[str], verdict_lines: Sequence[str] = ()) -> str:
    """Columns that hold one value for every row move to a 'Common to all rows' list."""
    metrics = sorted({c[len("metric."):] for c in df.columns if c.startswith("metric.")},
                     key=lambda m: ("exact" not in m and m != "accuracy", m))
    shown = _headline_columns(df, metrics)
    gate_metrics = sorted(set(df["gate_metric"].dropna()))
    delta = f"Δ {gate_metrics[0]}" if len(gate_metrics) == 1 else "Δ gate metric"
    table = pd.DataFrame({
        "model": df["model"], "task": df["task"], "data": df["data"], "mode": df.apply(_mode_label, axis=1),
        "precision": df["precision"], "scenario": df["scenario"], "batch": df["batch_size"].map(_int),
        "threads": df["threads"].map(_int), "instances": df.apply(_instances_label, axis=1),
        "attn": df["attn_implementation"], "status": df["status"],
        **{m: df[f"metric.{m}"].map(_fmt) if f"metric.{m}" in df else "-" for m in shown},
        delta: df["metric_delta"].map(_signed), "gate": df["gate"].map(_fmt),
        "fwd ex/s": df["fwd_examples_s"].map(_num), "speed-up": df["speedup"].map(lambda v: _fmt(v, 2)),
        "e2e speed-up": df["e2e_speedup"].map(lambda v: _fmt(v, 2)),
        "tok/s": df["fwd_tokens_s"].map(_num),
        "p50 ms": df["latency_p50_ms"].map(_num), "p99 ms": df["latency_p99_ms"].map(_num),
        "prep s": df["prepare_s"].map(_num),
        "parity Δmax": df["parity_max_abs_diff"].map(lambda v: "-" if _missing(v) else f"{v:.1e}") if "parity_max_abs_diff" in df else "-",
        "same pred": df["parity_identical"].map(lambda v: _fmt(v, 3)) if "parity_identical" in df else "-",
        "RSS MB": df["peak_rss_mb"].where(df["status"] == "ok").map(lambda v: _fmt(v, 0)),
        "cache": df["feature_cache"], "sweep": df["sweep"], "cpu": df["cpu_model"], "flags": df["cpu_flags"], "host": df["host"],
    }).fillna("-").astype(str)
    common = {c: table[c].iloc[0] for c in table.columns
              if c in _COMMON_CANDIDATES and table[c].nunique(dropna=False) == 1}
    table = table.drop(columns=list(common))
    metric_names = ", ".join(gate_metrics) or "the headline metric"
    lines = [f"# cpueval report ({len(df)} jobs: " + ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items())
             + ")", "", f"Generated {dt.datetime.now().isoformat(timespec='seconds')}. Baseline: `{baseline}` of the "
             "same job (model, task, data, batch size, threads, CPU); speed-up = forward examples/s ÷ baseline's "
             "(steady state); e2e speed-up = baseline's ÷ this row's preparation + warm-up + forward-loop seconds; "
             f"Δ = {metric_names} − baseline's; gate: {metric_names} ≥ {gate:g} × baseline's.", ""]
    if verdict_lines:
        lines += ["## Verdict", ""] + [f"- {text}" for text in verdict_lines] + [""]
    if common:
        lines += ["Common to all rows: " + "; ".join(f"{k} **{v}**" for k, v in common.items()), ""]
    lines += [_pipe_table(table), ""]
    failures = df[df["status"] != "ok"]
    if not failures.empty:
        lines += ["## Not ok", ""]
        lines += [f"- `{r['job']}` ({_mode_label(r)} / {r['precision']}): **{r['status']}**: {r['reason'] or '-'}"
                  for _, r in failures.iterrows()]
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    lines += ["Files: table.csv, table.parquet (every column, one row per job; run_dir points at each job).", ""]
    return "\n".join(lines)


_COMMON_CANDIDATES = ("model", "task", "data", "mode", "precision", "scenario", "batch", "threads", "instances", "attn", "cache", "cpu",
                      "flags", "host", "status", "gate", "parity Δmax", "same pred", "sweep")


def _headline_columns(df: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """Headline metrics of the rows (not every metric a task computes, e.g. SQuAD v2's HasAns_*)."""
    names: list[str] = []
    for value in df["headline_metrics"].dropna():
        names += [n for n in str(value).split(",") if n and n not in names]
    return names or list(metrics)[:2]


def _pipe_table(table: pd.DataFrame) -> str:
    """A Markdown pipe table padded to column width, so it reads on a terminal as well as on GitHub."""
    cells = [list(table.columns)] + table.astype(str).values.tolist()
    cells = [[c.replace("|", "\\|") for c in row] for row in cells]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    numeric = [all(_looks_numeric(row[i]) for row in cells[1:]) for i in range(len(widths))]
    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric)) + " |"
    rule = "|" + "|".join(("-" * (w + 1) + ":") if n else ("-" * (w + 2)) for w, n in zip(widths, numeric)) + "|"
    return "\n".join([line(cells[0]), rule] + [line(row) for row in cells[1:]])


def _looks_numeric(text: str) -> bool:
    try:
        float(text.replace(",", "").replace("+", ""))
        return True
    except ValueError:
        return text == "-"


# -- plots ---------------------------------------------------------------------------------------------
FACET_COLUMNS = ("model", "data", "batch_size", "threads", "host")


def _facets(df: pd.DataFrame) -> list[tuple[str, pd.Series]]:
    """Panels: one per combination of what varies besides mode and precision (model, data, batch,
    threads, host). A row missing such a value (a job refused before threads were set) joins every
    panel that agrees with it on the rest."""
    columns = [c for c in FACET_COLUMNS if df[c].nunique(dropna=True) > 1]
    if not columns:
        return [("", pd.Series(True, index=df.index))]
    complete = df.dropna(subset=columns)
    panels = []
    for values in dict.fromkeys(map(tuple, complete[columns].astype(str).values)):
        mask = pd.Series(True, index=df.index)
        for column, value in zip(columns, values):
            mask &= df[column].isna() | (df[column].astype(str) == value)
        panels.append((" ".join(_facet_part(c, df.loc[mask, c].dropna().iloc[0]) for c in columns), mask))
    return panels


def _facet_part(column: str, value: Any) -> str:
    if column in ("batch_size", "threads"):
        return f"{'bs' if column == 'batch_size' else 'thr'}={_int(value)}"
    return str(value).rstrip("/").split("/")[-1]


def _row_label(row: pd.Series, df: pd.DataFrame) -> str:
    extra = [_facet_part(c, row[c]) for c in FACET_COLUMNS if df[c].nunique(dropna=True) > 1 and not _missing(row[c])]
    return " ".join([f"{_mode_label(row)}/{row['precision']}", *extra])


def plot_throughput(df: pd.DataFrame, path: Path) -> Path:
    """Grouped bars: forward examples/s per mode (groups) x precision (bars), one panel per other
    combination; Δ of the gate metric vs baseline above each bar; failed cells marked ✗."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = _facets(df)[:MAX_FACETS]
    mode_order, precision_order = plugins.names("mode"), plugins.names("precision")
    modes = sorted(df["mode"].dropna().unique(), key=lambda m: _order(pd.Series([m]), mode_order)[0])
    precisions = sorted(df["precision"].dropna().unique(), key=lambda p: _order(pd.Series([p]), precision_order)[0])
    cols = min(len(panels), 3)
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.0, 1.4 * len(modes) * len(precisions) / 2 + 3) * cols,
                                                  4.2 * rows), squeeze=False)
    width = 0.8 / max(len(precisions), 1)
    for ax, (name, mask) in zip(axes.flat, panels):
        part = df[mask]
        top = part["fwd_examples_s"].max(skipna=True)
        top = top if top == top and top else 1.0
        for j, precision in enumerate(precisions):
            for i, mode in enumerate(modes):
                cell = part[(part["mode"] == mode) & (part["precision"] == precision)]
                if cell.empty:
                    continue
                _draw_cell(ax, cell.iloc[-1], i + (j - (len(precisions) - 1) / 2) * width, width, top, j)
        ax.set_xticks(range(len(modes)), modes)
        ax.set_ylim(0, top * 1.5)  # room for the rotated labels
        ax.set_ylabel("forward examples/s")
        ax.set_title(name or "throughput by mode and precision", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=f"C{j}") for j in range(len(precisions))]
    fig.legend(handles, precisions, title="precision", loc="center right")
    fig.suptitle("Forward throughput; labels: Δ gate metric vs baseline; ✗ failed or refused", fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.86, 0.95))
    return _save(fig, path)


def _draw_cell(ax: Any, row: pd.Series, x: float, width: float, top: float, color: int) -> None:
    if row["status"] != "ok" or _missing(row["fwd_examples_s"]):
        ax.bar(x, top * 0.04, width, color="none", edgecolor=f"C{color}", hatch="//")
        ax.text(x, top * 0.06, f"✗ {row['status']}", ha="center", va="bottom", rotation=90, fontsize=8, color="red")
        return
    ax.bar(x, row["fwd_examples_s"], width, color=f"C{color}")
    label = "base" if row["gate"] == "baseline" else (
        f"Δ{row['gate_metric']} {_signed(row['metric_delta'], 1)}" if not _missing(row["metric_delta"])
        else str(row["gate"]))
    if row["gate"] == "FAIL":
        label += " ✗gate"
    ax.text(x, row["fwd_examples_s"] + top * 0.02, label, ha="center", va="bottom", rotation=90, fontsize=8)


def plot_latency(df: pd.DataFrame, path: Path) -> Optional[Path]:
    """Box plot of per-batch latencies (results.json batch_latencies_ms) per ok job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, labels = [], []
    for _, row in df.iterrows():
        values = row["_records"].batch_latencies_ms if row["status"] == "ok" else None
        if values:
            data.append(values)
            labels.append(_row_label(row, df))
    if not data:
        return None
    data, labels = data[:MAX_BOXES], labels[:MAX_BOXES]
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.38 * len(data)))
    try:
        ax.boxplot(data, orientation="horizontal", showfliers=True)
    except TypeError:  # matplotlib < 3.10
        ax.boxplot(data, vert=False, showfliers=True)
    ax.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("per-batch forward latency, ms (log scale)")
    ax.set_title("Latency distribution per job (timed loop; batches differ in length)", fontsize=10)
    ax.grid(axis="x", alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


def plot_scaling(df: pd.DataFrame, path: Path) -> Optional[Path]:
    """Throughput against batch size, one line per mode/precision/threads (when those vary)."""
    ok = df[df["status"] == "ok"].dropna(subset=["fwd_examples_s"])
    if ok["batch_size"].nunique() < 2 and ok["threads"].nunique() < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, part in ok.groupby(["mode", "precision", "threads"], dropna=False):
        part = part.sort_values("batch_size")
        ax.plot(part["batch_size"], part["fwd_examples_s"], marker="o", label=f"{key[0]}/{key[1]} thr={key[2]}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("forward examples/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temp file in the same directory, then rename: concurrent readers (and a
    second report over the same sweep) never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a report is for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text(path: Path, text: str) -> Path:
    _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


# -- writing -----------------------------------------------------------------------------------------
VERDICT_FILE = "verdict.json"


def verdict_entries(df: pd.DataFrame) -> list[dict[str, Any]]:
    """cpueval.verdict over the table: one entry per (model, task, data, CPU, scenario)."""
    return verdict.verdicts(df, plugins.reference("mode"), plugins.reference("precision"))


def write_verdict(df: pd.DataFrame, out: Path) -> list[dict[str, Any]]:
    """verdict.json in `out` (entries with their one-line text); returns the entries."""
    entries = [{**entry, "line": verdict.line(entry)} for entry in verdict_entries(df)]
    _write_text(out / VERDICT_FILE, json.dumps(jsonable(entries), indent=2, ensure_ascii=False) + "\n")
    return entries


def write_report(dirs: Sequence[Path], out: Path, baseline: Optional[str] = None, gate: float = DEFAULT_GATE,
                 gate_metric: Optional[str] = None) -> Path:
    """Table (CSV, parquet), plots, verdict.json and report.md in `out`; returns report.md's path."""
    out = Path(out)
    df = build_table(dirs, baseline, gate, gate_metric)
    table = df.drop(columns=["_records"])
    _write_text(out / "table.csv", table.to_csv(index=False))
    _atomic(out / "table.parquet", lambda tmp: table.to_parquet(tmp, index=False))
    lines = [entry["line"] for entry in write_verdict(df, out)]
    plots = [plot_throughput(df, out / "throughput.png"), plot_latency(df, out / "latency.png"),
             plot_scaling(df, out / "scaling.png")]
    names = [p.name for p in plots if p is not None]
    return _write_text(out / "report.md", markdown(df, gate, baseline or default_baseline(), names, lines))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpueval report", description="Aggregate results.json of runs and sweeps into one table, "
        "Markdown report and plots.")
    parser.add_argument("dirs", nargs="+", type=Path, help="run or sweep directories (searched recursively)")
    parser.add_argument("--out", type=Path, help="output directory (default: DIR/report for one DIR, "
                        "else outputs/reports/<time>)")
    parser.add_argument("--baseline", default=None, help="baseline row selector (default: the reference mode and "
                        "precision, mode=eager,precision=fp32)")
    parser.add_argument("--gate", type=float, default=DEFAULT_GATE, help="accuracy gate: metric >= GATE x baseline's "
                        f"(default {DEFAULT_GATE})")
    parser.add_argument("--gate-metric", help="metric for delta and gate (default: f1 if reported, else the task's "
                        "first headline metric)")
    parser.add_argument("--verdict", action="store_true", help="print only the verdict lines (the fastest "
                        "configuration passing the gate, per model, task, data, CPU and scenario) and write "
                        f"{VERDICT_FILE}")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    out = args.out or (args.dirs[0] / "report" if len(args.dirs) == 1 else
                       Path("outputs/reports") / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    try:
        if args.verdict:
            entries = write_verdict(build_table(args.dirs, args.baseline, args.gate, args.gate_metric), out)
            print("\n".join(entry["line"] for entry in entries))
            print(f"written: {out / VERDICT_FILE}")
            return 0
        path = write_report(args.dirs, out, args.baseline, args.gate, args.gate_metric)
    except (FileNotFoundError, ValueError) as err:
        print(f"cpueval report: error: {err}", file=sys.stderr, flush=True)
        return 2
    print(path.read_text(encoding="utf-8"))
    print(f"written: {out}/ (report.md, {VERDICT_FILE}, table.csv, table.parquet, plots)")
    return 0
