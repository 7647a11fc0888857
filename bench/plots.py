"""PNG plots of a results document: throughput vs batch size, the latency CDF, the replicated\npath's latency by rate, and records/s across a leader kill."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

COLORS = {
    "shoal": "#1f77b4",
    "shoal-bulk": "#9467bd",
    "shoal-raw": "#17becf",
    "redis": "#d62728",
    "nats": "#2ca02c",
    "confluent-kafka": "#ff7f0e",
    "acks=all, factor 3": "#1f77b4",
    "acks=1, factor 1": "#8c564b",
}


def write_plots(doc: dict, out_dir: Path) -> list[Path]:
    """Draw what ``doc`` has data for into ``out_dir``; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    machine = doc["machine"]
    subtitle = f"{machine['cpu_model']}, {machine['cores']} cores; {doc['config']['record_size']}-byte records"
    written = []

    sweeps = {name: s["sweep"] for name, s in doc["systems"].items() if s.get("sweep")}
    if sweeps:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, points in sweeps.items():
            ax.plot([p["batch"] for p in points], [p["records_per_s"] for p in points],
                    marker="o", label=name, color=COLORS.get(name))  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size (records per request / pipeline / ack window)")
        ax.set_ylabel("produce throughput (records/s)")
        ax.set_title(f"Produce throughput vs batch size\n{subtitle}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        written.append(_save(fig, out_dir / "throughput_vs_batch.png"))

    cdfs = {name: s["latency"]["latency"]["cdf"] for name, s in doc["systems"].items()
            if (s.get("latency") or {}).get("latency")}  # fmt: skip
    if cdfs:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, cdf in cdfs.items():
            ax.plot([ms for _, ms in cdf], [q for q, _ in cdf], label=name, color=COLORS.get(name))
        ax.set_xscale("log")
        ax.set_xlabel("produce acknowledgement latency (ms, log scale)")
        ax.set_ylabel("fraction of records")
        rate = doc["config"]["latency_rate"]
        ax.set_title(f"Latency CDF at {rate:,} records/s\n{subtitle}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
        written.append(_save(fig, out_dir / "latency_cdf.png"))

    paths = (doc.get("replicated") or {}).get("paths") or {}
    latency = paths.get("latency") or {}
    if latency:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, by_rate in latency.items():
            rates = [int(r) for r, res in by_rate.items() if (res or {}).get("latency")]
            for q, style in (("p50_ms", ":"), ("p99_ms", "-"), ("p999_ms", "--")):
                ax.plot(rates, [by_rate[str(r)]["latency"][q] for r in rates], style, marker="o",
                        color=COLORS.get(label), label=f"{label} {q.removesuffix('_ms').replace('p999', 'p99.9')}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("fixed rate (records/s)")
        ax.set_ylabel("acknowledgement latency (ms)")
        ax.set_title(f"Replicated path: 3 brokers, linger_ms=5\n{subtitle}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / "replicated_latency.png"))

    failover = paths.get("failover") or {}
    if failover.get("records_per_s"):
        series = failover["records_per_s"]
        step = failover["bin_seconds"]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([i * step for i in range(len(series))], series, color=COLORS["acks=all, factor 3"])
        if failover.get("killed_at_seconds") is not None:
            ax.axvline(failover["killed_at_seconds"], color="#d62728", linestyle="--",
                       label=f"SIGKILL of the leader (broker {failover['killed_broker']})")  # fmt: skip
        ax.set_xlabel("seconds")
        ax.set_ylabel(f"records acknowledged per second ({step:g} s bins)")
        ax.set_title(f"acks=all, factor 3, {failover['rate']:,} records/s offered, across a leader kill\n{subtitle}",
                     fontsize=10)  # fmt: skip
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        written.append(_save(fig, out_dir / "failover_timeline.png"))
    return written


def _save(fig, path: Path) -> Path:
    from matplotlib import pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote %s", path)
    return path
