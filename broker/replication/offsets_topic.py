"""The internal topic of a replicated cluster that holds committed offsets: ``__consumer_offsets``.

As in Kafka, committed offsets are records of a replicated topic, so they survive what
any partition survives: its records are written with ``acks=all`` through the normal
write path, copied by followers, fenced by leader epochs, truncated like any log. The
leader of partition ``partition_for(group)`` is the group's coordinator.

The topic's shape and placement (``with_offsets_topic``) are in
``router/internal_topics.py``: it is created in etcd beside the declared topics but is
not part of the declared topology, and produce requests to it are refused.

Each batch holds one record; its key says what it is, its value is msgpack:

- key ``c``: a commit, value ``[group, generation, [[topic, partition, offset, metadata], ...]]``
- key ``d``: a deletion, value ``[group, [[topic, partition], ...] | None]`` (None: the group)
- key ``f``: the first coordinator of the partition was here, value ``[broker id, leader epoch]``
- key ``s``: a snapshot, value ``[[group, generation, [[topic, partition, offset, metadata], ...]], ...]``:
  the whole state of the partition at that offset, which replaces what came before.

Snapshots bound the topic's size: the coordinator writes one once half a segment of
records followed the last (and at least the last one's size), and every replica deletes
the segments that lie wholly before the latest snapshot below its high watermark.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import msgpack

from shoal.client.partitioner import partition_for_key
from shoal.client.records import decode_records, encode_batch, iter_frames
from shoal.broker.storage.offsets import apply_commit, apply_delete
from shoal.client.structs import OffsetAndMetadata, TopicPartition
from shoal.router.internal_topics import PARTITIONS

COMMIT, DELETE, SNAPSHOT, FIRST = b"c", b"d", b"s", b"f"
_READ_BYTES = 1 << 20


def partition_for(group: str) -> int:
    """The offsets partition of ``group`` (Kafka's default partitioner on the name)."""
    return partition_for_key(group.encode(), PARTITIONS)


def encode(key: bytes, value) -> bytes:
    """One batch of one record."""
    return encode_batch([(key, msgpack.packb(value), None, None)])


def records(plog, start: int, end: int, *, to_log_end: bool = False) -> Iterator[tuple[int, bytes, object, int]]:
    """``(offset, key, value, frame size)`` of the records of ``plog`` in ``[start, end)``;
    ``end`` at most the high watermark, or the log end with ``to_log_end``."""
    offset = max(start, plog.log_start_offset)
    while offset < end:
        buf = plog.read(offset, _READ_BYTES, to_log_end=to_log_end)
        if not buf:
            return
        for header, frame in iter_frames(buf):
            for r in decode_records(plog.topic, plog.partition, header, frame, min_offset=offset):
                if r.offset >= end:
                    return
                yield r.offset, r.key, msgpack.unpackb(r.value), header.size
            offset = max(offset, header.next_offset)


@dataclasses.dataclass
class OffsetsState:
    """The committed offsets and last generations of the groups of one offsets partition."""

    groups: dict[str, dict[TopicPartition, OffsetAndMetadata]] = dataclasses.field(default_factory=dict)
    generations: dict[str, int] = dataclasses.field(default_factory=dict)
    since_snapshot: int = 0  # bytes of the records after the last snapshot
    snapshot_bytes: int = 0  # the size of the last snapshot

    def due(self, segment_bytes: int) -> bool:
        """Time for a snapshot: half a segment of records since the last one, and at least
        as much as it took (so a large state is not written again and again)."""
        return self.since_snapshot >= max(segment_bytes // 2, self.snapshot_bytes)

    def apply(self, key: bytes, value, size: int) -> None:
        if key == COMMIT:
            group, generation, entries = value
            apply_commit(self.groups, group, entries)
            self.generations[group] = max(generation or 0, self.generations.get(group, 0))
            self.since_snapshot += size
        elif key == DELETE:
            group, parts = value
            apply_delete(self.groups, group, parts)
            if parts is None:
                self.generations.pop(group, None)
            self.since_snapshot += size
        elif key == FIRST:
            self.since_snapshot += size
        elif key == SNAPSHOT:
            self.groups.clear()
            self.generations.clear()
            for group, generation, entries in value:
                self.generations[group] = generation
                self.groups[group] = {TopicPartition(t, p): OffsetAndMetadata(o, m) for t, p, o, m in entries}
            self.since_snapshot, self.snapshot_bytes = 0, size

    def snapshot(self) -> list:
        names = sorted(set(self.groups) | set(self.generations))
        return [
            [g, self.generations.get(g, 0),
             [[tp.topic, tp.partition, om.offset, om.metadata] for tp, om in sorted(self.groups.get(g, {}).items())]]
            for g in names
        ]

    def copy(self) -> OffsetsState:
        return OffsetsState(
            {g: dict(o) for g, o in self.groups.items()}, dict(self.generations), self.since_snapshot, self.snapshot_bytes
        )
