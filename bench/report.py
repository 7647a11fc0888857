"""Headline numbers of a results document: shoal/peer ratios and a Markdown table.

``python -m bench.report [results.json]`` prints the table of a stored run (default
``bench/results/latest.json``), the form docs/benchmarks.md quotes.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

SHOALS = ("shoal", "shoal-bulk", "shoal-raw")
PEERS = ("redis", "nats")


def _metric(system: dict, metric: str) -> float | None:
    if metric == "latency_p99_ms":
        return ((system.get("latency") or {}).get("latency") or {}).get("p99_ms")
    return (system.get(metric) or {}).get("records_per_s")


def ratios(systems: dict[str, dict]) -> dict[str, dict[str, float]]:
    """``{metric: {"shoal/redis": x, ...}}`` for produce and consume records/s (above 1:
    shoal is faster) and latency p99 (below 1: shoal answers sooner)."""
    out: dict[str, dict[str, float]] = {}
    for metric in ("produce", "consume", "latency_p99_ms"):
        for mine in SHOALS:
            for peer in PEERS:
                a = _metric(systems.get(mine, {}), metric)
                b = _metric(systems.get(peer, {}), metric)
                if a and b:
                    out.setdefault(metric, {})[f"{mine}/{peer}"] = round(a / b, 2)
    return out


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}{unit}" if value >= 100 else f"{value:.2f}{unit}"


def markdown(doc: dict) -> str:
    """The comparison table, the ratios and the resource runs as Markdown."""
    m = doc["machine"]
    cfg = doc["config"]
    lines = [
        f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu_model']}; Python {m['python']}.",
        f"{cfg['records']:,} records of {cfg['record_size']} bytes, batch {cfg['batch']}; latency at "
        f"{cfg['latency_rate']:,} records/s for {cfg['latency_seconds']:g} s; shoal flush "
        f"{cfg['shoal_flush']} ({cfg['shoal_flush_interval_ms']} ms).",
        "",
        "| system | produce rec/s | produce MB/s | consume rec/s | consume MB/s | p50 ms | p99 ms | p99.9 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in doc["systems"].items():
        prod, cons = s.get("produce") or {}, s.get("consume") or {}
        lat = (s.get("latency") or {}).get("latency") or {}
        lines.append(
            f"| {name} | {_fmt(prod.get('records_per_s'))} | {_fmt(prod.get('mb_per_s'))} | "
            f"{_fmt(cons.get('records_per_s'))} | {_fmt(cons.get('mb_per_s'))} | {_fmt(lat.get('p50_ms'))} | "
            f"{_fmt(lat.get('p99_ms'))} | {_fmt(lat.get('p999_ms'))} | {_fmt(lat.get('max_ms'))} |"
        )
    for name, reason in doc.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {reason} | | | | | | | |")
    if any((s.get("produce") or {}).get("server_cpu_percent") is not None for s in doc["systems"].values()):
        lines += ["", "| system | produce CPU % server / client | consume CPU % server / client |", "|---|---:|---:|"]
        for name, s in doc["systems"].items():
            cells = []
            for metric in ("produce", "consume"):
                r = s.get(metric) or {}
                cells.append(f"{_fmt(r.get('server_cpu_percent'))} / {_fmt(r.get('client_cpu_percent'))}")
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    if doc.get("ratios"):
        lines += ["", "| ratio | produce (>1: shoal faster) | consume (>1: shoal faster) | p99 latency (<1: shoal lower) |",
                  "|---|---:|---:|---:|"]  # fmt: skip
        present = {pair for by_pair in doc["ratios"].values() for pair in by_pair}
        for pair in (f"{mine}/{peer}" for mine in SHOALS for peer in PEERS if f"{mine}/{peer}" in present):
            row = [doc["ratios"].get(k, {}).get(pair) for k in ("produce", "consume", "latency_p99_ms")]
            lines.append(f"| {pair} | " + " | ".join("-" if v is None else f"{v:.2f}x" for v in row) + " |")
    rb = (doc["systems"].get("redis") or {}).get("redis_benchmark") or {}
    if rb:
        lines += ["", "redis-benchmark XADD (C client, the server's ceiling): " + "; ".join(
            f"{label} (pipeline {r.get('pipeline')}) {_fmt(r.get('records_per_s'))} rec/s" for label, r in rb.items())]  # fmt: skip
    lines += _client_paths(doc.get("client_paths"))
    lines += _before_after(doc.get("client_paths_before"), doc.get("client_paths"))
    lines += _replicated(doc.get("replicated") or {})
    res = doc.get("resources", {})
    part = res.get("partitions") or {}
    if "idle_cpu_percent" in part:
        after = part["after_one_record_each"]
        lines += ["", f"{part['partitions']:,} partitions on one broker: RSS {part['at_start']['rss_mib']} MiB at start, "
                  f"{after['rss_mib']} MiB after one record in each; {after['threads']} threads; "
                  f"idle CPU {part['idle_cpu_percent']}% over {part['idle_seconds']} s "
                  f"({part['settling_cpu_percent']}% while the writes' fsyncs settled)."]  # fmt: skip
    restart = res.get("restart") or {}
    if "ready_seconds" in restart:
        lines += ["", f"Restart after kill -9 with {restart['log_gib']} GiB in one partition: healthy in "
                  f"{restart['ready_seconds']} s, last record served {restart['serving_seconds']} s after spawn."]  # fmt: skip
    errors = {name: s["errors"] for name, s in doc["systems"].items() if s.get("errors")}
    errors.update({f"resources.{k}": v["error"] for k, v in res.items() if isinstance(v, dict) and "error" in v})
    if errors:
        lines += ["", "Errors: " + json.dumps(errors)]
    return "\n".join(lines)


def _client_paths(cp: dict | None) -> list[str]:
    if not cp:
        return []
    lines = ["", "| floor | ns |", "|---|---:|"]
    lines += [f"| {name} | {ns:.1f} |" for name, ns in cp["floor_ns"].items()]
    lines += ["", "| path | run | records/s | client CPU µs/record | x floor (await) | load |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['path']} | {r['run']} | {r['records_per_s']:,} | {r['cpu_us_per_record']:.2f} | {r['x_floor']:.1f} | "
              f"{r['load']:.1f} |" for r in cp["paths"]]  # fmt: skip
    return lines


def _medians(cp: dict) -> dict[str, tuple[float, float]]:
    """``{path: (median records/s, median client CPU µs/record)}`` over its runs."""
    by_path: dict[str, list[dict]] = {}
    for row in cp.get("paths") or []:
        by_path.setdefault(row["path"], []).append(row)
    return {path: (statistics.median(r["records_per_s"] for r in rows), statistics.median(r["cpu_us_per_record"] for r in rows))
            for path, rows in by_path.items()}  # fmt: skip


def _before_after(before: dict | None, after: dict | None) -> list[str]:
    if not before or not after:
        return []
    if "error" in before:
        return ["", f"Client paths of {before['revision']}: {before['error']}"]
    old, new = _medians(before), _medians(after)
    lines = ["", f"Before: {before['revision']} ({before['commit'][:12]}), await floor "
             f"{before['floor_ns']['await trivial coroutine']:.1f} ns; after: this revision, "
             f"{after['floor_ns']['await trivial coroutine']:.1f} ns (medians of the runs).", "",
             "| path | records/s before | after | x | client CPU µs/record before | after |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for path, (rate, cpu) in new.items():
        was_rate, was_cpu = old.get(path, (None, None))
        speedup = f"{rate / was_rate:.2f}x" if was_rate else "-"
        lines.append(f"| {path} | {_fmt(was_rate)} | {_fmt(rate)} | {speedup} | {_fmt(was_cpu)} | {_fmt(cpu)} |")
    return lines


def _replicated(rep: dict) -> list[str]:
    lines: list[str] = []
    paths = rep.get("paths") or {}
    if paths.get("throughput"):
        lines += ["", "| replicated path | send() rec/s | p50/p99/p99.9 ms at " +
                  " | ".join(f"{int(r):,}/s" for r in next(iter(paths["latency"].values()), {})) + " |"]  # fmt: skip
        lines.append("|---|---:|" + "---:|" * len(next(iter(paths["latency"].values()), {})))
        for label, tp in paths["throughput"].items():
            cells = []
            for res in (paths["latency"].get(label) or {}).values():
                lat = (res or {}).get("latency") or {}
                cells.append(f"{_fmt(lat.get('p50_ms'))} / {_fmt(lat.get('p99_ms'))} / {_fmt(lat.get('p999_ms'))}"
                             if lat else (res or {}).get("error", "-"))  # fmt: skip
            lines.append(f"| {label} | {_fmt(tp.get('records_per_s'))} | " + " | ".join(cells) + " |")
    fo = paths.get("failover") or {}
    if "killed_at_seconds" in fo:
        lines += ["", f"Leader SIGKILL at {fo['rate']:,} records/s offered (acks=all): broker {fo['killed_broker']} killed "
                  f"at {fo['killed_at_seconds']} s, first acknowledgement after it {fo['first_ack_after_kill_seconds']} s "
                  f"later (new leader: broker {fo['new_leader']}); {fo['records_acked']:,} records acknowledged, "
                  f"{fo['records_failed']:,} failed."]  # fmt: skip
    many = rep.get("partitions") or {}
    if many:
        rest = many.get("at_rest") or {}
        lines += ["", f"{many['partitions']:,} partitions at factor 3 on 3 brokers: started in {many.get('start_seconds')} s, "
                  f"every leader and full ISR after {many.get('settle_seconds')} s more, every log open after "
                  f"{many.get('logs_open_seconds')} s more; at rest per broker: "
                  + "; ".join(f"#{i} {r['rss_mib']} MiB, {r['threads']} threads, {r['idle_cpu_percent']}% CPU"
                              for i, r in rest.items())
                  + f". Broker {many.get('killed_broker')} (leading {many.get('its_leaderships')}) SIGKILLed: "
                  f"its leaderships all moved after {many.get('leaderships_moved_seconds')} s."]  # fmt: skip
        if many.get("error"):
            lines.append(f"Error: {many['error']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(argv[0]) if argv else Path(__file__).resolve().parent / "results" / "latest.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"unable to read {path}: {exc}", file=sys.stderr)
        return 1
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
