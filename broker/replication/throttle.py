"""The reassignment throttle: the bytes per second a leader sends to replicas being added.

Kafka's ``leader.replication.throttled.rate`` for KIP-455 moves: the rate is stored in
etcd (``/shoal/<cluster>/throttle``, set by ``shoal topology apply --throttle`` or
``shoal broker drain --throttle``; absent: no limit) and applies to each leader broker as
a whole, over every replica it is adding until that replica is in sync. Replicas in the
ISR, and replicas of the replica set catching up after a restart, are never throttled.
A token bucket one second deep: a fetch by an added replica gets at most the bytes in
the bucket (at least one whole batch once the bucket is positive), nothing while it is
empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shoal.client.structs import TopicPartition

__all__ = ["Throttle"]


class Throttle:
    """A token bucket for the frames a leader sends to added replicas.

    Args:
        adding: whether ``follower`` is being added to ``tp`` (only those are throttled).
    """

    def __init__(self, adding: Callable[[TopicPartition, int], bool]):
        self.adding = adding
        self.rate: int | None = None  # bytes/s; None: no limit
        self.sent = 0  # bytes sent to added replicas, for progress and tests
        self._tokens = 0.0
        self._at = time.monotonic()

    def set_rate(self, rate: int | None) -> None:
        if rate != self.rate:
            self.rate = rate
            self._tokens = float(rate or 0)

    def _refill(self) -> None:
        now = time.monotonic()
        if self.rate:
            self._tokens = min(float(self.rate), self._tokens + self.rate * (now - self._at))
        self._at = now

    def budget(self, tp: TopicPartition, follower: int, max_bytes: int) -> int:
        """How many bytes a fetch of ``tp`` by ``follower`` may get now."""
        if not self.rate or not self.adding(tp, follower):
            return max_bytes
        self._refill()
        return 0 if self._tokens <= 0 else min(max_bytes, max(int(self._tokens), 1))

    def spent(self, tp: TopicPartition, follower: int, nbytes: int) -> None:
        """``nbytes`` went to ``follower`` (the bucket may go below zero by one batch)."""
        if self.adding(tp, follower):
            self.sent += nbytes
            if self.rate:
                self._tokens -= nbytes

    def refill_s(self) -> float:
        """How long until the bucket is positive again."""
        if not self.rate or self._tokens > 0:
            return 0.0
        return -self._tokens / self.rate + 0.01
