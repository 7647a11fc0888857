"""Rendezvous (highest-random-weight) hashing: which broker owns a partition or a group.

Every broker id gets a weight for a key, a 64-bit BLAKE2b digest of
``"<topic>\\0<partition>\\0<broker id>"``; the owner is the broker with the greatest
weight (ties, which need a 64-bit collision, go to the smaller id). The weights do not
depend on the other brokers, so adding a broker moves to it only the ~1/N of
partitions it now wins, and removing one moves only the partitions it owned. The
whole order, not just its head, is the future replica set: the top R of ``rank()``.

The digest is fixed bytes in, fixed bytes out, so every process, Python version and
platform computes the same owners (never the built-in ``hash()``, which is salted).
Pure functions, no IO.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b

__all__ = ["weight", "rank", "owner", "group_coordinator"]


def weight(key: str, broker_id: int) -> int:
    """The 64-bit weight of ``broker_id`` for ``key`` (greater wins)."""
    digest = blake2b(f"{key}\0{broker_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _rank_key(key: str, broker_ids: Iterable[int]) -> list[int]:
    ids = list(broker_ids)
    if not ids:
        raise ValueError("no brokers to choose from")
    return sorted(ids, key=lambda b: (-weight(key, b), b))


def rank(topic: str, partition: int, broker_ids: Iterable[int]) -> list[int]:
    """Every broker id, most preferred first, for ``(topic, partition)``.

    ``rank(...)[0]`` is the owner; ``rank(...)[:R]`` is a replica set of size R.

    Raises:
        ValueError: ``broker_ids`` is empty.
    """
    return _rank_key(f"{topic}\0{partition}", broker_ids)


def owner(topic: str, partition: int, broker_ids: Iterable[int]) -> int:
    """The broker id that owns ``(topic, partition)``."""
    return rank(topic, partition, broker_ids)[0]


def group_coordinator(group: str, broker_ids: Iterable[int]) -> int:
    """The broker id that coordinates consumer group ``group``.

    The key is prefixed so a group named like a topic does not share its weights.
    """
    return _rank_key(f"group\0{group}", broker_ids)[0]
