"""What a leader knows of its followers: their log ends, the high watermark, the ISR.

Each follower fetch carries the follower's log end offset (its ``fetch_offset``: it
has everything below). The leader keeps the latest per follower and moves the high
watermark to the least log end over the ISR (its own included). A follower that has
not caught up with the leader's log end for ``replica_lag_time_max_ms`` leaves the
ISR; one whose log end reaches the high watermark rejoins. A follower that reports a
log end below the high watermark lost records it had acknowledged (its disk lost an
unflushed tail): it leaves the ISR at once, so that it cannot be elected with a log
that lacks committed records. Both changes are
compare-and-swap transitions in etcd from the state this leader last read
(``MetadataStore.shrink_isr`` / ``expand_isr``); a failed one means the state moved
(another leader, or a concurrent change): the mirrored state will show it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from shoal.broker.storage import PartitionLog

log = logging.getLogger(__name__)


@dataclass
class LeaderState:
    """The leader's view of one partition it leads at ``leader_epoch``."""

    plog: PartitionLog
    leader_epoch: int
    me: int
    follower_leo: dict[int, int] = field(default_factory=dict)
    caught_up_at: dict[int, float] = field(default_factory=dict)  # monotonic time of the last fetch at the log end

    def start(self, replicas) -> None:
        """Every follower gets a full lag period from the moment this broker leads."""
        now = time.monotonic()
        for r in replicas:
            if r != self.me:
                self.caught_up_at[r] = now

    def fetched(self, follower: int, fetch_offset: int) -> None:
        self.follower_leo[follower] = fetch_offset
        if fetch_offset >= self.plog.log_end_offset:
            self.caught_up_at[follower] = time.monotonic()

    def lost_committed(self, follower: int, isr) -> bool:
        """Is ``follower`` in ``isr`` with a log end below the high watermark (it had
        every record below it, so it lost some)?"""
        return follower in isr and follower != self.me and self.follower_leo[follower] < self.plog.high_watermark

    def high_watermark(self, isr) -> int:
        """The least log end over ``isr`` (a follower not heard from yet counts as 0)."""
        ends = [self.plog.log_end_offset if r == self.me else self.follower_leo.get(r, 0) for r in isr]
        return min(ends) if ends else self.plog.log_end_offset

    def lagging(self, isr, lag_s: float) -> list[int]:
        """ISR followers that have not been at the log end for ``lag_s`` seconds."""
        now = time.monotonic()
        return [r for r in isr if r != self.me and now - self.caught_up_at.get(r, 0.0) > lag_s]

    def caught_up(self, replicas, isr) -> list[int]:
        """Replicas outside the ISR whose log end reached the high watermark."""
        hw = self.plog.high_watermark
        return [r for r in replicas if r not in isr and r != self.me and self.follower_leo.get(r, -1) >= hw]
