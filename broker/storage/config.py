"""The storage settings of one partition log, as plain values.

The broker builds a ``LogConfig`` from the topic's entry in the topology; storage
itself knows nothing of topologies (it never imports ``shoal.router``).
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024
MAX_SEGMENT_BYTES = 2**31 - 1  # positions in the index are u32; leave room for one more body
FLUSH_POLICIES = ("always", "interval", "never")
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """How one partition's log is written, flushed and trimmed.

    Attributes:
        segment_bytes: roll to a new segment when an append would take the active one
            past this size (a single append larger than this gets a segment of its own).
        index_interval_bytes: bytes of frames between two sparse index entries.
        flush: ``"always"``: fsync before an append is acknowledged; ``"interval"``:
            fsync at most ``flush_interval_ms`` after a write (sealed segments included);
            ``"never"``: leave it to the OS (fsync only at stop).
        flush_interval_ms: the delay of the background fsync under ``"interval"``.
        retention_ms: delete sealed segments whose newest timestamp is older; None keeps.
        retention_bytes: delete the oldest sealed segments while the log is larger; None keeps.
        linger_ms: how long the writer waits for more appends to join a write group.
        linger_bytes: a group this large is written without waiting; also caps a group.
        max_queue_bytes: pending append bytes beyond which ``append`` raises THROTTLED.
        producer_expiry_ms: an idempotent producer whose last batch is older than this
            (by its batch timestamp) is forgotten; its next batch is accepted as a new
            producer's (Kafka's ``producer.id.expiration.ms``, one day by default).
    """

    segment_bytes: int = 128 * MiB
    index_interval_bytes: int = 4096
    flush: str = "interval"
    flush_interval_ms: int = 1000
    retention_ms: int | None = None
    retention_bytes: int | None = None
    linger_ms: float = 1
    linger_bytes: int = 1 * MiB
    max_queue_bytes: int = 64 * MiB
    producer_expiry_ms: int = DAY_MS

    def __post_init__(self) -> None:
        if self.flush not in FLUSH_POLICIES:
            raise ValueError(f"flush must be one of {', '.join(FLUSH_POLICIES)}, got {self.flush!r}")
        if not 1 <= self.segment_bytes <= MAX_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes must be between 1 and {MAX_SEGMENT_BYTES}, got {self.segment_bytes}")
        for name in ("index_interval_bytes", "flush_interval_ms", "linger_bytes", "max_queue_bytes", "producer_expiry_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.linger_ms < 0:
            raise ValueError(f"linger_ms must not be negative, got {self.linger_ms}")
        for name in ("retention_ms", "retention_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or None, got {value}")
