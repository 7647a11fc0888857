"""PNG plots of a results document: throughput vs batch size, and the latency CDF."""

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
    return written


def _save(fig, path: Path) -> Path:
    from matplotlib import pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote %s", path)
    return path
