"""Cluster state for the console, gathered from every broker at most once per ``TTL_S``.

A page never makes the gateway ask every broker about every row. One snapshot costs
three calls per broker (``/v1/health``, ``/metrics``, ``/v1/cluster``), made at once
under a concurrency bound, and is shared by every request within ``TTL_S``. After that
a request gets the last snapshot at once while the next is taken in the background (at
10,000 partitions on a busy machine a snapshot takes a second or two, and a page
should not wait for it); only a snapshot older than ``STALE_S`` makes requests wait,
all for the same one (single flight). Group offsets cost one ``/v1/groups`` per broker
the same way; a group's members are asked of its coordinator only for the groups a
page shows.

Partition numbers come from each broker's Prometheus text. Only the few series the
console reads are picked out with one regular expression: prometheus_client's parser
takes ~0.6 s for the 13,600 lines of 3,400 partitions, this ~40 ms.

Rates are counter deltas between consecutive snapshots, per broker (a restarted broker's
counters start again at zero, so a counter that went down counts from zero).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from shoal.client.errors import ShoalError
from shoal.router.hashing import group_coordinator

from .replicas import partition_states

log = logging.getLogger(__name__)

TTL_S = 2.0
STALE_S = 10.0
PROBE_TIMEOUT_S = 2.0
CONCURRENCY = 16
HISTORY = 90  # rate samples kept for the overview chart (3 minutes at one per 2 s)

_SERIES = re.compile(
    r'^shoal_(partition_high_watermark|partition_log_start_offset|partition_size_bytes'
    r'|records_appended_total|bytes_appended_total|bytes_fetched_total)'
    r'\{([^}]*)\} (\S+)$',
    re.M,
)
_LABEL = re.compile(r'(topic|partition)="([^"]*)"')
_PARTITION_FIELD = {
    "partition_high_watermark": 0,
    "partition_log_start_offset": 1,
    "partition_size_bytes": 2,
}
_COUNTER_FIELD = {"records_appended_total": 0, "bytes_appended_total": 1, "bytes_fetched_total": 2}


@dataclass
class BrokerState:
    """What one broker said in one snapshot.

    Attributes:
        partitions: ``(topic, partition) -> [high watermark, log start offset, size bytes]``
            for every partition log the broker has open.
        counters: ``topic -> [records appended, bytes appended, bytes fetched]`` since it started.
    """

    id: int
    url: str
    up: bool = False
    error: str | None = None
    epoch: int | None = None
    version: str | None = None
    partitions: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    counters: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Snapshot:
    """One consistent-enough picture of the cluster; read-only once built.

    Attributes:
        taken_ms: wall-clock time it was taken.
        cluster: the ``GET /v1/cluster`` body of the newest epoch any broker reported.
        states: ``topic -> [{"leader", "leader_epoch", "replicas", "isr"}]`` (``replicas``).
        brokers: per broker id, in topology order.
        stats: ``(topic, partition) -> [high watermark, log start, size]`` from the
            partition's leader (or any broker holding it when the leader did not answer).
        rates: ``topic -> [records/s in, bytes/s in, bytes/s out]`` since the previous snapshot.
        history: ``[(taken_ms, {topic: rates})]``, oldest first, topics without traffic left out.
    """

    taken_ms: int
    cluster: dict
    states: dict[str, list[dict]]
    brokers: dict[int, BrokerState]
    stats: dict[tuple[str, int], list[int]]
    rates: dict[str, list[float]]
    history: list[tuple[int, dict[str, list[float]]]]


def parse_metrics(text: str, state: BrokerState) -> None:
    """Fill ``state.partitions`` and ``state.counters`` from a broker's /metrics text."""
    for name, labels, value in _SERIES.findall(text):
        found = dict(_LABEL.findall(labels))
        topic, partition = found.get("topic"), found.get("partition")
        if topic is None:
            continue
        if partition is not None:
            row = state.partitions.setdefault((topic, int(partition)), [0, 0, 0])
            row[_PARTITION_FIELD[name]] = int(float(value))
        else:
            state.counters.setdefault(topic, [0.0, 0.0, 0.0])[_COUNTER_FIELD[name]] = float(value)


class _Slot:
    __slots__ = ("value", "taken", "task")

    def __init__(self) -> None:
        self.value = None
        self.taken = -math.inf
        self.task: asyncio.Task | None = None


class _Cache:
    """Values per key: fresh for ``ttl`` s; until ``stale`` s the last one is answered at once
    while a new one is taken in the background; older or missing, the caller waits for it.
    One call per key at a time, shared by every caller (single flight)."""

    def __init__(self, ttl: float = TTL_S, stale: float = STALE_S) -> None:
        self.ttl, self.stale = ttl, stale
        self._slots: dict[object, _Slot] = {}

    async def get(self, key: object, make: Callable[[], Awaitable]):
        now = time.monotonic()
        slot = self._slots.get(key)
        if slot is None:
            if len(self._slots) > 4096:  # group names are unbounded; forget the stale ones
                self._slots = {k: s for k, s in self._slots.items() if now - s.taken <= self.stale or s.task}
            slot = self._slots[key] = _Slot()
        age = now - slot.taken
        if age <= self.ttl:
            return slot.value
        if slot.task is None:
            slot.task = asyncio.create_task(self._fill(slot, make))
            slot.task.add_done_callback(_log_failure)
        if age <= self.stale:
            return slot.value
        return await asyncio.shield(slot.task)

    @staticmethod
    async def _fill(slot: _Slot, make: Callable[[], Awaitable]):
        try:
            slot.value = await make()
            slot.taken = time.monotonic()
            return slot.value
        finally:
            slot.task = None


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("console: gathering cluster state failed", exc_info=task.exception())


class Collector:
    """Takes snapshots through the gateway's session. Use from one event loop.

    Args:
        gateway: the ``Gateway`` whose topology, session and token are used.
    """

    def __init__(self, gateway):
        self.gateway = gateway
        self._cache = _Cache()
        self._limit = asyncio.Semaphore(CONCURRENCY)
        self._previous: tuple[float, dict[int, dict[str, list[float]]]] | None = None
        self._history: deque[tuple[int, dict[str, list[float]]]] = deque(maxlen=HISTORY)

    async def snapshot(self) -> Snapshot:
        return await self._cache.get("snapshot", self._take)

    async def group_offsets(self) -> tuple[dict[str, list[dict]], dict[int, str]]:
        """Committed offsets of every group, merged over brokers, and the brokers that did not answer."""
        return await self._cache.get("groups", self._group_offsets)

    async def members(self, groups: list[str]) -> dict[str, dict]:
        """Each group's coordinator view (state, generation, members), asked of its coordinator."""
        found = await asyncio.gather(*(self._cache.get(("members", g), lambda g=g: self._members(g)) for g in groups))
        return dict(zip(groups, found))

    # --- internals --------------------------------------------------------------------

    async def _get(self, url: str, *, as_json: bool):
        async with self._limit:
            timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
            async with self.gateway.session.get(url, timeout=timeout) as resp:
                if resp.status != 200:
                    raise ShoalError(f"{url} answered {resp.status}")
                return await (resp.json(content_type=None) if as_json else resp.text())

    async def _probe(self, broker) -> tuple[BrokerState, dict | None]:
        state = BrokerState(broker.id, broker.url)
        calls = (
            self._get(broker.url + "/v1/health", as_json=True),
            self._get(broker.url + "/metrics", as_json=False),
            self._get(broker.url + "/v1/cluster", as_json=True),
        )
        health, metrics, cluster = await asyncio.gather(*calls, return_exceptions=True)
        if isinstance(health, BaseException):
            state.error = _why(health)
            return state, None
        state.up, state.epoch, state.version = True, health.get("epoch"), health.get("version")
        if isinstance(metrics, BaseException):
            state.error = "metrics: " + _why(metrics)
        else:
            parse_metrics(metrics, state)
        return state, None if isinstance(cluster, BaseException) else cluster

    async def _take(self) -> Snapshot:
        brokers = self.gateway.topology.brokers
        probed = await asyncio.gather(*(self._probe(b) for b in brokers))
        states = {s.id: s for s, _ in probed}
        clusters = [c for _, c in probed if isinstance(c, dict) and "epoch" in c]
        cluster = max(clusters, key=lambda c: c["epoch"], default=None) or self.gateway.topology.to_dict()
        now = time.monotonic()
        rates = self._rates(now, states)
        taken_ms = int(time.time() * 1000)
        if rates is not None:
            self._history.append((taken_ms, {t: r for t, r in rates.items() if any(r)}))
        replicas = {topic: partition_states(cluster, topic) for topic in sorted(cluster.get("topics", {}))}
        return Snapshot(
            taken_ms, cluster, replicas, states, _leader_stats(replicas, states), rates or {}, list(self._history)
        )

    def _rates(self, now: float, states: dict[int, BrokerState]) -> dict[str, list[float]] | None:
        counters = {i: s.counters for i, s in states.items() if s.up}
        previous, self._previous = self._previous, (now, counters)
        if previous is None or now <= previous[0]:
            return None
        elapsed = now - previous[0]
        rates: dict[str, list[float]] = {}
        for broker_id, topics in counters.items():
            before = previous[1].get(broker_id, {})
            for topic, values in topics.items():
                old = before.get(topic, (0.0, 0.0, 0.0))
                row = rates.setdefault(topic, [0.0, 0.0, 0.0])
                for i, value in enumerate(values):
                    row[i] += (value - old[i] if value >= old[i] else value) / elapsed
        return rates

    async def _group_offsets(self) -> tuple[dict[str, list[dict]], dict[int, str]]:
        gw = self.gateway

        async def one(broker_id: int):
            async with self._limit:
                return await gw.json_call("GET", broker_id, "/v1/groups")

        ids = gw.topology.broker_ids
        views = await asyncio.gather(*(one(i) for i in ids), return_exceptions=True)
        merged: dict[str, list[dict]] = {}
        missing: dict[int, str] = {}
        for broker_id, view in zip(ids, views):
            if isinstance(view, BaseException):
                missing[broker_id] = _why(view)
                continue
            for group in view.get("groups", []):
                merged.setdefault(group["group"], []).extend(group["partitions"])
        return merged, missing

    async def _members(self, group: str) -> dict:
        gw = self.gateway
        coordinator = group_coordinator(group, gw.topology.broker_ids)
        try:
            async with self._limit:
                view = await gw.json_call("GET", coordinator, f"/v1/groups/{group}/members")
        except ShoalError as exc:
            return {"state": "unknown", "members": [], "coordinator": coordinator, "error": _why(exc)}
        return {**view, "coordinator": coordinator}


def _leader_stats(
    replicas: dict[str, list[dict]], states: dict[int, BrokerState]
) -> dict[tuple[str, int], list[int]]:
    """Per partition, the numbers of its leader; a follower's when the leader said nothing."""
    stats: dict[tuple[str, int], list[int]] = {}
    for state in states.values():
        stats.update(state.partitions)
    for topic, rows in replicas.items():
        for p, row in enumerate(rows):
            leader = states.get(row["leader"])
            if leader is not None and (topic, p) in leader.partitions:
                stats[(topic, p)] = leader.partitions[(topic, p)]
    return stats


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
