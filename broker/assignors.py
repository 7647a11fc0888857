"""Partition assignors for consumer groups: range, round-robin and sticky.

The coordinator runs them (server-side assignment, as in Kafka's KIP-848), so every
member of a group gets its share from one place. Each function maps sorted member ids
and their subscriptions to a target assignment; pure and deterministic.

* ``range``: per topic, contiguous runs of partitions, the first members getting one
  more when the count does not divide (Kafka's RangeAssignor).
* ``roundrobin``: all subscribed partitions dealt in turn to the members subscribed to
  them (Kafka's RoundRobinAssignor).
* ``sticky``: balanced like round-robin, but a partition stays with its current member
  whenever that keeps the balance, so a rebalance moves as few partitions as it can
  (Kafka's StickyAssignor).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable

from shoal.client.structs import TopicPartition

Assignment = dict[str, set[TopicPartition]]
Subscriptions = Mapping[str, frozenset[str]]


def _partitions(topics: Mapping[str, int], wanted: frozenset[str]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t in sorted(wanted) if t in topics for p in range(topics[t])]


def range_assign(subs: Subscriptions, topics: Mapping[str, int], current: Assignment | None = None) -> Assignment:
    out: Assignment = {m: set() for m in subs}
    for topic in sorted({t for ts in subs.values() for t in ts}):
        if topic not in topics:
            continue
        members = sorted(m for m, ts in subs.items() if topic in ts)
        per, extra = divmod(topics[topic], len(members))
        start = 0
        for i, member in enumerate(members):
            n = per + (1 if i < extra else 0)
            out[member].update(TopicPartition(topic, p) for p in range(start, start + n))
            start += n
    return out


def roundrobin_assign(subs: Subscriptions, topics: Mapping[str, int], current: Assignment | None = None) -> Assignment:
    out: Assignment = {m: set() for m in subs}
    members = sorted(subs)
    all_topics = frozenset(t for ts in subs.values() for t in ts)
    turn = 0
    for tp in _partitions(topics, all_topics):
        for _ in range(len(members)):
            member = members[turn % len(members)]
            turn += 1
            if tp.topic in subs[member]:
                out[member].add(tp)
                break
    return out


def sticky_assign(subs: Subscriptions, topics: Mapping[str, int], current: Assignment | None = None) -> Assignment:
    """Keep what each member has while balanced; hand out the rest to the least loaded.

    Balance: every member gets ``floor(n/m)`` or ``ceil(n/m)`` of the partitions it can
    take (exact when all members subscribe to the same topics).
    """
    current = current or {}
    members = sorted(subs)
    out: Assignment = {m: set() for m in members}
    wanted = frozenset(t for ts in subs.values() for t in ts)
    universe = _partitions(topics, wanted)
    if not members:
        return out
    quota_low, extra = divmod(len(universe), len(members))
    # Members allowed ceil: the first `extra` members by current load keep one more.
    by_load = sorted(members, key=lambda m: (-len(current.get(m, ())), m))
    quota = {m: quota_low + (1 if i < extra else 0) for i, m in enumerate(by_load)}
    taken: set[TopicPartition] = set()
    valid = set(universe)
    for m in members:
        keep = sorted(tp for tp in current.get(m, ()) if tp in valid and tp.topic in subs[m] and tp not in taken)
        for tp in keep[: quota[m]]:
            out[m].add(tp)
            taken.add(tp)
    for tp in universe:
        if tp in taken:
            continue
        candidates = [m for m in members if tp.topic in subs[m]]
        if not candidates:
            continue
        m = min(candidates, key=lambda c: (len(out[c]) >= quota[c], len(out[c]), c))
        out[m].add(tp)
        taken.add(tp)
    return out


ASSIGNORS: dict[str, Callable[..., Assignment]] = {
    "range": range_assign,
    "roundrobin": roundrobin_assign,
    "sticky": sticky_assign,
}
