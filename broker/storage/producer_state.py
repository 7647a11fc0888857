"""Idempotent produce: the last few batches of every producer id of one partition.

A producer numbers its batches per partition: ``base_sequence`` of a batch is the
sequence of its first record, so the next batch starts at ``base_sequence +
record_count``. The broker keeps the last ``KEEP`` batches of each producer id and
checks each new batch against them (Kafka's ``ProducerStateManager``, without epochs
or transactions):

* its ``base_sequence`` equals a kept batch's: a retried duplicate, not written again;
  the producer gets the original offsets;
* it is next in line (or the producer id is unknown): appended;
* lower than next in line: ``DuplicateSequence``; higher: ``OutOfOrderSequence``.

Sequences do not wrap: a producer that reaches 2**31 must start again with a new id.

Expiry is by time, not by segment: a producer is forgotten once its last write is
older than ``producer_expiry_ms`` (``LogConfig``; one day by default), checked at
every segment roll and by the broker's periodic retention pass. The time is the
broker's clock when the batch was written; batches replayed from the log after a
crash count as written at start-up, so a restart never shortens a producer's life.

Snapshots. At every segment roll the table is written to ``<offset>.snapshot`` in
the partition directory, ``<offset>`` being the 20-digit base offset of the new
segment: the state after every batch below that offset. The file is one record
framed as in ``durable`` (u32 length, u32 CRC32C, msgpack payload)::

    {"version": 1,
     "offset": int,                      # the state covers every batch below this offset
     "producers": [[producer_id, last_write_ms,
                    [[base_sequence, record_count, base_offset], ...]],   # oldest first
                   ...]}

It is written without fsync at the roll and fsynced with the sealed segment by the
next flush (so under ``flush: never`` only at stop). After an unclean stop, start-up
loads the newest readable snapshot at or below the recovered log end and replays the
frame headers from its offset on (normally the active segment only); with none, it
replays the whole log. A torn or corrupt snapshot is skipped with a WARNING and
removed. Snapshots below the log start offset go with retention, snapshots above the
log end with recovery's truncation.
"""

from __future__ import annotations

import logging
import os
from collections import ChainMap
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import NamedTuple

from shoal.client.errors import DuplicateSequence, OutOfOrderSequence
from shoal.client.records import NO_PRODUCER, FrameHeader

from .durable import read_record, write_record
from .segment import segment_name

log = logging.getLogger(__name__)

KEEP = 5
SNAPSHOT_SUFFIX = ".snapshot"
SNAPSHOT_VERSION = 1


class ProducerBatch(NamedTuple):
    """A written batch of an idempotent producer."""

    base_sequence: int
    record_count: int
    base_offset: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.record_count - 1


Batches = tuple[ProducerBatch, ...]


class ProducerEntry(NamedTuple):
    """One producer id: its last ``KEEP`` batches (oldest first) and when it last wrote."""

    batches: Batches
    last_write_ms: int


def is_idempotent(h: FrameHeader) -> bool:
    return h.producer_id != NO_PRODUCER and h.base_sequence >= 0


def check_sequence(entry: ProducerEntry | None, producer_id: int, h: FrameHeader) -> ProducerBatch | None:
    """The kept batch ``h`` duplicates, or None when ``h`` may be appended.

    Raises DuplicateSequence or OutOfOrderSequence when ``h`` is neither.
    """
    if entry is None:
        return None
    kept = entry.batches
    for b in kept:
        if b.base_sequence == h.base_sequence:
            return b
    last = kept[-1]
    expected = last.base_sequence + last.record_count
    if h.base_sequence == expected:
        return None
    if h.base_sequence < expected:
        raise DuplicateSequence(
            f"producer {producer_id} sent sequence {h.base_sequence}, which is older than the "
            f"last {len(kept)} batches kept; expected {expected}",
            producer_id=producer_id,
            expected=expected,
        )
    raise OutOfOrderSequence(
        f"producer {producer_id} sent sequence {h.base_sequence}, expected {expected}",
        producer_id=producer_id,
        expected=expected,
    )


def remember(state: MutableMapping[int, ProducerEntry], h: FrameHeader, base_offset: int, now_ms: int) -> None:
    """Record that ``h`` was written at ``base_offset`` at time ``now_ms``."""
    entry = state.get(h.producer_id)
    kept = entry.batches[-(KEEP - 1) :] if entry is not None else ()
    state[h.producer_id] = ProducerEntry((*kept, ProducerBatch(h.base_sequence, h.record_count, base_offset)), now_ms)


class ProducerTable:
    """producer id -> ProducerEntry. Not safe across threads.

    Changes are staged in layers (``stage()``: a ChainMap whose first map takes the
    writes) so the writer can check a whole write group and forget it if the write
    fails; ``commit(layer)`` makes a layer's changes permanent.
    """

    def __init__(self, entries: dict[int, ProducerEntry] | None = None):
        self._by_id: dict[int, ProducerEntry] = entries or {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, producer_id: int) -> ProducerEntry | None:
        return self._by_id.get(producer_id)

    def stage(self) -> ChainMap:
        return ChainMap({}, self._by_id)

    def commit(self, layer: ChainMap) -> None:
        self._by_id.update(layer.maps[0])

    def replay(self, headers: Iterable[FrameHeader], now_ms: int) -> None:
        """Replay written batches (oldest first), as recovery finds them."""
        for h in headers:
            if is_idempotent(h):
                remember(self._by_id, h, h.base_offset, now_ms)

    def expire(self, now_ms: int, expiry_ms: int) -> int:
        """Forget producers whose last write is ``expiry_ms`` or more before ``now_ms``; return how many."""
        stale = [pid for pid, entry in self._by_id.items() if now_ms - entry.last_write_ms >= expiry_ms]
        for pid in stale:
            del self._by_id[pid]
        return len(stale)

    def truncate(self, offset: int) -> None:
        """Forget batches at or above ``offset`` (the log was cut there)."""
        for pid, entry in list(self._by_id.items()):
            kept = tuple(b for b in entry.batches if b.base_offset < offset)
            if kept:
                self._by_id[pid] = entry._replace(batches=kept)
            else:
                del self._by_id[pid]

    def to_list(self) -> list:
        return [[pid, e.last_write_ms, [list(b) for b in e.batches]] for pid, e in self._by_id.items()]

    @classmethod
    def from_list(cls, data: list) -> ProducerTable:
        """The table ``to_list`` gave. Raises ValueError/TypeError on anything else."""
        return cls({int(pid): ProducerEntry(tuple(ProducerBatch(*b) for b in kept), int(ts)) for pid, ts, kept in data})


# -- snapshots -------------------------------------------------------------------


def snapshot_path(directory: Path, offset: int) -> Path:
    return directory / f"{segment_name(offset)}{SNAPSHOT_SUFFIX}"


def write_snapshot(directory: Path, offset: int, table: ProducerTable) -> Path:
    """Write the snapshot for ``offset`` (temporary file and rename; no fsync: see the module doc)."""
    path = snapshot_path(directory, offset)
    state = {"version": SNAPSHOT_VERSION, "offset": offset, "producers": table.to_list()}
    write_record(path, state, sync=False)
    return path


def snapshot_offsets(directory: Path) -> list[int]:
    """The offsets of the snapshot files in ``directory``, ascending."""
    found = []
    for entry in os.scandir(directory):
        stem, dot, ext = entry.name.partition(".")
        if dot and "." + ext == SNAPSHOT_SUFFIX and len(stem) == 20 and stem.isdigit():
            found.append(int(stem))
    return sorted(found)


def load_snapshot(directory: Path, at_most: int) -> tuple[int, ProducerTable] | None:
    """The newest readable snapshot at or below offset ``at_most``, or None.

    Unreadable ones on the way are removed with a WARNING.
    """
    for offset in reversed([o for o in snapshot_offsets(directory) if o <= at_most]):
        path = snapshot_path(directory, offset)
        try:
            state = read_record(path)
            if state["version"] != SNAPSHOT_VERSION or state["offset"] != offset:
                raise ValueError(f"version {state['version']}, offset {state['offset']}")
            return offset, ProducerTable.from_list(state["producers"])
        except (ValueError, TypeError, KeyError) as exc:
            log.warning("ignoring producer snapshot %s: %s", path, exc)
            path.unlink(missing_ok=True)
    return None


def delete_snapshots(directory: Path, *, below: int | None = None, above: int | None = None) -> None:
    """Remove snapshots below offset ``below`` and/or above offset ``above``."""
    for offset in snapshot_offsets(directory):
        if (below is not None and offset < below) or (above is not None and offset > above):
            snapshot_path(directory, offset).unlink(missing_ok=True)
