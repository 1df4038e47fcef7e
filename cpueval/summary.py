"""The short table printed at the end of a run."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def render_summary(record: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    actual, requested = record.get("actual", {}), record["requested"]
    mode = actual.get("mode", requested["mode"])
    if mode != requested["mode"]:
        mode = f"{mode} (requested {requested['mode']}, fell back)"
    rows.append(("status", record["status"]))
    rows.append(("model", record.get("model", {}).get("name_or_path", "-")))
    rows.append(("data", f"{record['data']['source']} ({record['data']['num_examples']} examples, "
                         f"{record['data']['num_features']} features, cache {record['data']['feature_cache']})"))
    rows.append(("mode / precision", f"{mode} / {actual.get('precision', requested['precision'])}"))
    env = record["environment"]
    rows.append(("cpu", f"{env['cpu_model']} ({', '.join(env['isa_flags']) or 'no AVX2'}), "
                        f"{actual.get('intra_op_threads')} threads"))
    for name in record.get("headline_metrics", []):
        rows.append((name, _fmt(record["metrics"].get(name))))
    tp, lat, t = record["throughput"], record["latency_ms"], record["timing"]
    rows.append(("forward loop", f"{_fmt(tp['forward_examples_per_s'])} examples/s, "
                                 f"{_fmt(tp['forward_features_per_s'])} features/s, "
                                 f"{_fmt(tp['forward_tokens_per_s'], 0)} tokens/s"))
    rows.append(("end to end", f"{_fmt(tp['e2e_examples_per_s'])} examples/s in {_fmt(t['total'])} s"))
    rows.append(("batch latency ms", f"p50 {_fmt(lat['p50'])}  p90 {_fmt(lat['p90'])}  p99 {_fmt(lat['p99'])}"))
    rows.append(("prepare / warm-up s", f"{_fmt(t.get('prepare'))} / {_fmt(t.get('warmup'))}"))
    rows.append(("padding computed", f"{record['data']['padding_share'] * 100:.1f}%"))
    rows.append(("peak RSS", f"{_fmt(record['memory']['peak_rss_mb'], 0)} MB"))
    if "parity" in record:
        rows.append(("parity vs eager fp32", f"identical predictions {record['parity'].get('identical_predictions')}"))
    rows.append(("files", record["run_dir"]))
    width = max(len(k) for k, _ in rows)
    lines = [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines += [f"  WARNING: {w}" for w in record.get("warnings", [])]
    return "\n".join(["cpueval summary", *lines])
