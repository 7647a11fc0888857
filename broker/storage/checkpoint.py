"""What a log may trust at start-up: the clean-shutdown file and the recovery points.

``<partition dir>/clean-shutdown``, written by a clean stop after the last fsync and
removed as soon as start-up has read it (so a later crash cannot trust it): the state
of the active segment, so its scan can be skipped. One record framed as in
``durable``, msgpack payload::

    {"base_offset": int,      # the active segment's base offset
     "size": int,             # its .log size in bytes
     "next_offset": int,      # one past its last record
     "max_timestamp": int,    # its newest batch timestamp (-2**63: none)
     "max_ts_offset": int,    # the batch carrying it
     "producers": [...]}      # the producer table, as in a producer snapshot

It is trusted only when the active segment still has that base offset and size.

``<data dir>/recovery-point-offset-checkpoint`` (Kafka's file of that name): for every
partition log of the broker, its recovery point, the offset below which everything
was fsynced. One record framed as in ``durable``, msgpack payload::

    {"version": 1,
     "boot_id": str,          # the kernel's boot id when written ("" when unknown)
     "partitions": [[topic, partition, recovery_point], ...]}

Written with ``write_atomic`` by the log manager every ``checkpoint_interval_ms``
when a point moved, after a partition is deleted, and at stop. After an unclean
stop every segment holding offsets at or above a partition's recovery point is
CRC-checked and cut at the first bad frame; a partition missing from the file
(or a missing file) is checked from its first segment. When the file's boot id is the
running kernel's, the machine did not go down since: the crash was the process's
alone, the page cache kept every completed write, and only the active segment's tail
is checked.

``<data dir>/replication-offset-checkpoint`` (Kafka's file of that name): the high
watermark of every replica's log, written like the recovery points, so that a
restarted replica starts from the high watermark it had (``PartitionLog.start_replicated``)
and not from its log end, which may hold records no other replica has. Msgpack
payload ``{"version": 1, "partitions": [[topic, partition, high_watermark], ...]}``.
A high watermark read back is at most what was committed (it only ever rises, and
the file may lag): a missing or unreadable file counts as 0.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from shoal.client.structs import TopicPartition

from .durable import read_record, write_record

log = logging.getLogger(__name__)

CLEAN_SHUTDOWN = "clean-shutdown"
RECOVERY_POINTS = "recovery-point-offset-checkpoint"
HIGH_WATERMARKS = "replication-offset-checkpoint"
_VERSION = 1
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class RecoveryPoints(NamedTuple):
    """A checkpoint as read: the points, and whether it was written since the last boot."""

    points: dict[TopicPartition, int]
    same_boot: bool


def boot_id() -> str:
    """The running kernel's boot id; "" where there is none (then no boot counts as the same)."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""
_CLEAN_KEYS = ("base_offset", "size", "next_offset", "max_timestamp", "max_ts_offset", "producers")


def read_clean_shutdown(directory: Path) -> dict | None:
    """The state a clean stop recorded, removed at once; None when absent or unreadable."""
    path = directory / CLEAN_SHUTDOWN
    try:
        state = read_record(path)
    except FileNotFoundError:
        return None
    except ValueError as exc:
        log.warning("ignoring %s: %s", path, exc)
        state = None
    path.unlink()
    if not isinstance(state, dict) or any(k not in state for k in _CLEAN_KEYS):
        return None
    return state


def write_clean_shutdown(directory: Path, state: dict) -> None:
    """Not fsynced: a lost or torn file only means a scan at the next start."""
    write_record(directory / CLEAN_SHUTDOWN, state, sync=False)


def read_recovery_points(data_dir: Path) -> RecoveryPoints:
    """The recovery points of the last checkpoint; none (check everything) when unreadable."""
    path = data_dir / RECOVERY_POINTS
    try:
        state = read_record(path)
        if state["version"] != _VERSION:
            raise ValueError(f"version {state['version']}")
        points = {TopicPartition(str(t), int(p)): int(o) for t, p, o in state["partitions"]}
        booted = boot_id()
        return RecoveryPoints(points, bool(booted) and state["boot_id"] == booted)
    except FileNotFoundError:
        return RecoveryPoints({}, False)
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("ignoring %s (every partition is checked as after a power cut): %s", path, exc)
        return RecoveryPoints({}, False)


def write_recovery_points(data_dir: Path, points: dict[TopicPartition, int]) -> None:
    entries = [[tp.topic, tp.partition, offset] for tp, offset in sorted(points.items())]
    write_record(data_dir / RECOVERY_POINTS, {"version": _VERSION, "boot_id": boot_id(), "partitions": entries})


def read_high_watermarks(data_dir: Path) -> dict[TopicPartition, int]:
    """The replicas' high watermarks of the last checkpoint; none when unreadable."""
    path = data_dir / HIGH_WATERMARKS
    try:
        state = read_record(path)
        if state["version"] != _VERSION:
            raise ValueError(f"version {state['version']}")
        return {TopicPartition(str(t), int(p)): int(o) for t, p, o in state["partitions"]}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError, KeyError) as exc:
        log.warning("ignoring %s (replicas wait for their leader's high watermark): %s", path, exc)
        return {}


def write_high_watermarks(data_dir: Path, marks: dict[TopicPartition, int]) -> None:
    entries = [[tp.topic, tp.partition, offset] for tp, offset in sorted(marks.items())]
    write_record(data_dir / HIGH_WATERMARKS, {"version": _VERSION, "partitions": entries})
