"""What a reassignment will do and how far it has come, as the CLI shows it.

``planned`` lists, per partition whose replica set a topology (and the drained brokers)
would change, the replicas before and after, what each new replica must copy and the
leader move. ``moving`` lists the partitions with a move under way and, from their
leaders' ``GET /v1/cluster`` (``reassignments``), the bytes each added replica has
copied; two samples give a rate and an ETA. Sizes are the leader's
``shoal_partition_size_bytes``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

from shoal.client.errors import ShoalError
from shoal.client.structs import TopicPartition
from shoal.router.console.collector import BrokerState, parse_metrics
from shoal.router.metadata.partition import PartitionState
from shoal.router.reassign.placement import target_replicas
from shoal.router.topology import Topology

__all__ = ["planned", "moving", "sizes", "with_rates", "human_bytes"]


def planned(
    topology: Topology, states: dict[TopicPartition, PartitionState], drained: Collection[int],
    sizes: dict[TopicPartition, int],
) -> list[dict[str, Any]]:
    """The partitions of ``topology`` whose replica set would change (pure)."""
    rows = []
    for tp, state in sorted(states.items()):
        if tp.topic not in topology.topics or tp.partition >= topology.topics[tp.topic].partitions:
            continue
        after = target_replicas(topology, tp, drained)
        before = state.target
        if before == after and not state.moving:
            continue
        adding = [r for r in after if r not in before]
        size = sizes.get(tp)
        rows.append({
            "topic": tp.topic, "partition": tp.partition, "before": list(before), "after": list(after),
            "adding": adding, "removing": [r for r in before if r not in after],
            "leader_before": state.leader, "leader_after": after[0],
            "bytes_per_replica": size, "bytes_to_copy": None if size is None else size * len(adding),
        })
    return rows


async def sizes(api, states: dict[TopicPartition, PartitionState], ids: dict[int, str]) -> dict[TopicPartition, int]:
    """Each partition's size on its leader, from the leaders' ``/metrics``."""
    leaders = {s.leader for s in states.values() if s.leader in ids}

    async def scrape(broker_id: int) -> BrokerState:
        state = BrokerState(broker_id, ids[broker_id])
        try:
            parse_metrics(await api.metrics(ids[broker_id]), state)
        except ShoalError:
            pass  # sizes are shown as unknown
        return state

    scraped = {b.id: b for b in await asyncio.gather(*(scrape(b) for b in sorted(leaders)))}
    out = {}
    for tp, state in states.items():
        row = scraped.get(state.leader, BrokerState(0, "")).partitions.get((tp.topic, tp.partition))
        if row is not None:
            out[tp] = row[2]
    return out


async def moving(api, urls: list[str], states: dict[TopicPartition, PartitionState]) -> list[dict[str, Any]]:
    """Every partition with a move under way, with its leader's progress report when
    the leader answered."""
    reports: dict[tuple[str, int], dict] = {}

    async def ask(url: str) -> None:
        try:
            body = await api.cluster(url)
        except ShoalError:
            return
        for r in body.get("reassignments", []):
            reports[(r["topic"], r["partition"])] = r

    await asyncio.gather(*(ask(u) for u in urls))
    rows = []
    for tp, state in sorted(states.items()):
        if not state.moving:
            continue
        report = reports.get((tp.topic, tp.partition))
        row = {
            "topic": tp.topic, "partition": tp.partition, "replicas": list(state.replicas), "target": list(state.target),
            "adding": list(state.adding), "removing": list(state.removing), "leader": state.leader,
            "isr": list(state.isr), "bytes": None, "copied": {},
        }
        if report is not None and report.get("leader") == state.leader:
            row["bytes"] = report["bytes"]
            row["copied"] = {int(r): c["bytes_copied"] for r, c in report["copies"].items()}
        for r in state.adding:
            if r in state.isr and row["bytes"] is not None:
                row["copied"][r] = row["bytes"]
        rows.append(row)
    return rows


def with_rates(rows: list[dict[str, Any]], earlier: list[dict[str, Any]], seconds: float) -> list[dict[str, Any]]:
    """Add ``bytes_per_s`` and ``eta_s`` to each row of ``rows`` from an ``earlier`` sample (pure)."""
    before = {(r["topic"], r["partition"]): r for r in earlier}
    for row in rows:
        total = (row["bytes"] or 0) * len(row["adding"])
        copied = sum(row["copied"].get(r, 0) for r in row["adding"])
        row["bytes_to_copy"], row["bytes_copied"] = total, copied
        prev = before.get((row["topic"], row["partition"]))
        rate = None
        if prev is not None and seconds > 0:
            rate = max(copied - sum(prev["copied"].get(r, 0) for r in prev["adding"]), 0) / seconds
        row["bytes_per_s"] = rate
        row["eta_s"] = round((total - copied) / rate, 1) if rate else None
    return rows


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
