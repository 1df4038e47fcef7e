"""The short table printed at the end of a run."""

from __future__ import annotations

from typing import Any

from cpueval.records import RunRecord


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def render_summary(record: RunRecord) -> str:
    actual, requested = record.actual, record.requested
    mode = actual.mode if actual else requested.mode
    if mode != requested.mode:
        mode = f"{mode} (requested {requested.mode}, fell back)"
    data, env, threads = record.data, record.environment, record.threads
    rows: list[tuple[str, str]] = [
        ("status", record.status),
        ("model", record.model.name_or_path if record.model else "-"),
        ("data", f"{data.source} ({data.num_examples} examples, {data.num_features} features, "
                 f"cache {data.feature_cache})" if data else "-"),
        ("mode / precision", f"{mode} / {actual.precision if actual else requested.precision}"),
        ("cpu", f"{env.cpu_model} ({', '.join(env.isa_flags) or 'no AVX2'}), "
                f"{threads.intra_op_threads if threads else '-'} threads" if env else "-"),
    ]
    rows += [(name, _fmt(record.metrics.get(name))) for name in record.headline_metrics]
    tp, lat, t = record.throughput, record.latency_ms, record.timing
    if tp and lat and t:
        per_request = (record.config.get("runtime") or {}).get("scenario") == "latency"
        rows += [
            ("forward loop", f"{_fmt(tp.forward_examples_per_s)} examples/s, {_fmt(tp.forward_features_per_s)} "
                             f"features/s, {_fmt(tp.forward_tokens_per_s, 0)} tokens/s"),
            ("end to end", f"{_fmt(tp.e2e_examples_per_s)} examples/s in {_fmt(t.total)} s"),
            ("request latency ms" if per_request else "batch latency ms",
             f"p50 {_fmt(lat.p50)}  p90 {_fmt(lat.p90)}  p99 {_fmt(lat.p99)}  p99.9 {_fmt(lat.p999)}  mean {_fmt(lat.mean)}"),
            ("prepare / warm-up s", f"{_fmt(t.prepare)} / {_fmt(t.warmup)}"),
        ]
    if record.instances:
        rows += [(f"instance {i.index}", f"cores {','.join(map(str, i.cores))}: {i.batches} batches, "
                                         f"{_fmt(i.forward_features_per_s)} features/s") for i in record.instances]
    if data and data.padding_share is not None:
        rows.append(("padding computed", f"{data.padding_share * 100:.1f}%"))
    if record.memory:
        rows.append(("peak RSS", f"{_fmt(record.memory.peak_rss_mb, 0)} MB"))
    if record.parity:
        rows.append(("parity vs eager fp32", f"identical predictions {record.parity.identical_predictions}"))
    if record.int8_search:
        found = record.int8_search
        rows.append(("int8 search", f"{len(found.fp32_layers)} layer(s) fp32, target {found.accuracy_target} "
                                    f"{'met' if found.met_target else 'NOT met'} ({found.evaluations} evaluations, "
                                    f"{_fmt(found.seconds, 0)} s, cache {found.cache}); pass back {found.overrides}"))
    rows.append(("files", record.run_dir))
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"  WARNING: {w}" for w in record.warnings]
    return "\n".join(["cpueval summary", *lines])
