"""Which sealed segments retention deletes (by age and by size), and deleting them.

A segment goes when its newest timestamp is older than ``retention_ms``, or while the
log is larger than ``retention_bytes``, oldest first. The active segment always stays.
Producer snapshots below the new log start go with the segments.
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import LogConfig
from .producer_state import delete_snapshots
from .segment import Segment


def expired_count(sealed: Sequence[Segment], size_bytes: int, config: LogConfig, now_ms: int) -> int:
    """How many of the oldest ``sealed`` segments retention deletes (``size_bytes``: the whole log)."""
    k = 0
    if config.retention_ms is not None:
        cutoff = now_ms - config.retention_ms
        while k < len(sealed) and (sealed[k].max_timestamp is None or sealed[k].max_timestamp < cutoff):
            k += 1
    if config.retention_bytes is not None:
        total = size_bytes - sum(s.size for s in sealed[:k])
        while k < len(sealed) and total > config.retention_bytes:
            total -= sealed[k].size
            k += 1
    return k


def delete_segments(segments: Sequence[Segment], log_start: int) -> None:
    """Remove the files of ``segments`` and the snapshots below ``log_start`` (blocking)."""
    for seg in segments:
        seg.delete_files()
    if segments:
        delete_snapshots(segments[0].directory, below=log_start)
