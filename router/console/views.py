"""The console's JSON views, built from a ``Snapshot`` without IO.

Every list is filtered by what the caller may see first, then cut to one page, and only
the page's rows are computed: a page of 50 topics costs 50 rows whatever the cluster holds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from shoal.client.errors import UnknownTopic

from .collector import Snapshot
from .replicas import replication_factor

Visible = Callable[[str], bool]
_NO_RATES = (0.0, 0.0, 0.0)


def shoal_version() -> str | None:
    try:
        return version("shoal")
    except PackageNotFoundError:
        return None


def page(items: Sequence, offset: int, limit: int) -> dict:
    return {"total": len(items), "offset": offset, "limit": limit, "items": list(items[offset : offset + limit])}


def matching(names, visible: Visible, query: str) -> list[str]:
    """Sorted names the caller may see that contain ``query`` (case-insensitive)."""
    query = query.lower()
    return sorted(n for n in names if visible(n) and query in n.lower())


def _up(snap: Snapshot) -> set[int]:
    return {i for i, b in snap.brokers.items() if b.up}


def _rates(rates: dict[str, list[float]], visible: Visible) -> dict[str, float]:
    total = [0.0, 0.0, 0.0]
    for topic, row in rates.items():
        if visible(topic):
            total = [a + b for a, b in zip(total, row)]
    return {"records_in_per_s": total[0], "bytes_in_per_s": total[1], "bytes_out_per_s": total[2]}


def overview(snap: Snapshot, visible: Visible) -> dict:
    up = _up(snap)
    led: Counter[int] = Counter()
    partitions = under = offline = topics = 0
    for topic, states in snap.states.items():
        if not visible(topic):
            continue
        topics += 1
        for state in states:
            partitions += 1
            if state["leader"] in up:
                led[state["leader"]] += 1
            else:
                offline += 1
            under += len(state["isr"]) < len(state["replicas"])
    return {
        "cluster": snap.cluster.get("cluster"),
        "epoch": snap.cluster.get("epoch"),
        "version": shoal_version(),
        "taken_ms": snap.taken_ms,
        "brokers": [
            {"id": b.id, "url": b.url, "up": b.up, "error": b.error, "leader_of": led[b.id]}
            for b in snap.brokers.values()
        ],
        "topics": topics,
        "partitions": partitions,
        "under_replicated": under,
        "offline": offline,
        "rates": _rates(snap.rates, visible),
        "history": [{"t": t, **_rates(rates, visible)} for t, rates in snap.history],
    }


def topic_row(snap: Snapshot, name: str) -> dict:
    states = snap.states[name]
    up = _up(snap)
    size = records = under = offline = 0
    for p, state in enumerate(states):
        stats = snap.stats.get((name, p))
        if stats is not None:
            records += stats[0] - stats[1]
            size += stats[2]
        offline += state["leader"] not in up
        under += len(state["isr"]) < len(state["replicas"])
    rates = snap.rates.get(name, _NO_RATES)
    return {
        "name": name,
        "partitions": len(states),
        "replication": replication_factor(snap.cluster, name, states),
        "records": records,
        "size_bytes": size,
        "records_in_per_s": rates[0],
        "bytes_in_per_s": rates[1],
        "bytes_out_per_s": rates[2],
        "under_replicated": under,
        "offline": offline,
    }


def topics(snap: Snapshot, visible: Visible, query: str, offset: int, limit: int) -> dict:
    found = page(matching(snap.states, visible, query), offset, limit)
    found["items"] = [topic_row(snap, name) for name in found["items"]]
    return found


def topic(snap: Snapshot, name: str, offset: int, limit: int) -> dict:
    """One topic: its totals, its config and one page of its partitions."""
    if name not in snap.states:
        raise UnknownTopic(f"unknown topic {name!r}", topic=name)
    up = _up(snap)
    found = page(range(len(snap.states[name])), offset, limit)
    rows = []
    for p in found["items"]:
        state = snap.states[name][p]
        hw, start, size = snap.stats.get((name, p), (0, 0, 0))
        rows.append({
            "partition": p, **state, "leader_up": state["leader"] in up,
            "high_watermark": hw, "log_start_offset": start, "size_bytes": size,
        })
    config = {k: v for k, v in snap.cluster["topics"][name].items() if k != "partitions"}
    return {**topic_row(snap, name), "config": config, "page": {**found, "items": rows}}


def brokers(snap: Snapshot) -> dict:
    led: Counter[int] = Counter()
    held: Counter[int] = Counter()
    for states in snap.states.values():
        for state in states:
            led[state["leader"]] += 1
            held.update(state["replicas"])
    rows = []
    for b in snap.brokers.values():
        rows.append({
            "id": b.id, "url": b.url, "up": b.up, "error": b.error, "epoch": b.epoch, "version": b.version,
            "leader_of": led[b.id], "replica_of": held[b.id],
            "disk_bytes": sum(stats[2] for stats in b.partitions.values()) if b.up else None,
            "metrics_url": b.url + "/metrics", "health_url": b.url + "/v1/health",
        })
    return {"cluster": snap.cluster.get("cluster"), "epoch": snap.cluster.get("epoch"), "brokers": rows}


def lag_rows(snap: Snapshot, rows: list[dict]) -> list[dict]:
    """Committed offset, watermarks and lag per partition, lag clamped at the log start offset.

    Retention may delete records a group never read: those cannot be consumed any more,
    so they are not lag (high watermark minus max(committed, log start), never below 0).
    """
    out = []
    for row in sorted(rows, key=lambda r: (r["topic"], r["partition"])):
        stats = snap.stats.get((row["topic"], row["partition"]))
        start = stats[1] if stats else 0
        hw, committed = row.get("high_watermark"), row.get("offset")
        lag = None if hw is None or committed is None else max(0, hw - max(committed, start))
        out.append({
            "topic": row["topic"], "partition": row["partition"], "offset": committed,
            "high_watermark": hw, "log_start_offset": start, "lag": lag,
        })
    return out


def group_row(snap: Snapshot, name: str, rows: list[dict], members: dict) -> dict:
    lags = lag_rows(snap, rows)
    return {
        "group": name,
        "state": members.get("state"),
        "members": len(members.get("members", [])),
        "coordinator": members.get("coordinator"),
        "topics": sorted({r["topic"] for r in lags}),
        "partitions": len(lags),
        "lag": sum(r["lag"] or 0 for r in lags),
    }


def group(snap: Snapshot, name: str, rows: list[dict], members: dict) -> dict:
    """One group: its members with their assignments, and lag per partition with its holder.

    A partition a member holds but the group never committed is listed with no offset and no lag.
    """
    holder = {}
    for member in members.get("members", []):
        for topic, parts in (member.get("assignment") or {}).items():
            for p in parts:
                holder[(topic, p)] = member["member_id"]
    committed = {(r["topic"], r["partition"]) for r in rows}
    uncommitted = [
        {"topic": t, "partition": p, "offset": None, "high_watermark": snap.stats.get((t, p), (0,))[0]}
        for t, p in holder if (t, p) not in committed
    ]
    lags = [{**r, "member": holder.get((r["topic"], r["partition"]))} for r in lag_rows(snap, rows + uncommitted)]
    return {
        **group_row(snap, name, rows, members),
        "generation": members.get("generation"),
        "assignor": members.get("assignor"),
        "error": members.get("error"),
        "member_list": members.get("members", []),
        "lag_rows": lags,
    }
