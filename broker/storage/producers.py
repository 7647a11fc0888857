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
The table lives in memory; ``PartitionLog`` rebuilds it at start-up from the frame
headers of the active segment (or from its clean-shutdown file).
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterable, MutableMapping
from typing import NamedTuple

from shoal.client.errors import DuplicateSequence, OutOfOrderSequence
from shoal.client.records import NO_PRODUCER, FrameHeader

KEEP = 5


class ProducerBatch(NamedTuple):
    """A written batch of an idempotent producer."""

    base_sequence: int
    record_count: int
    base_offset: int

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.record_count - 1


Batches = tuple[ProducerBatch, ...]


def is_idempotent(h: FrameHeader) -> bool:
    return h.producer_id != NO_PRODUCER and h.base_sequence >= 0


def check_sequence(kept: Batches, producer_id: int, h: FrameHeader) -> ProducerBatch | None:
    """The kept batch ``h`` duplicates, or None when ``h`` may be appended.

    Raises DuplicateSequence or OutOfOrderSequence when ``h`` is neither.
    """
    if not kept:
        return None
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


def remember(state: MutableMapping[int, Batches], h: FrameHeader, base_offset: int) -> None:
    """Record that ``h`` was written at ``base_offset``."""
    kept = state.get(h.producer_id, ())
    state[h.producer_id] = (*kept[-(KEEP - 1) :], ProducerBatch(h.base_sequence, h.record_count, base_offset))


class ProducerTable:
    """producer id -> its last ``KEEP`` batches. Not safe across threads.

    Changes are staged in layers (``stage()``: a ChainMap whose first map takes the
    writes) so the writer can check a whole write group and forget it if the write
    fails; ``commit(layer)`` makes a layer's changes permanent.
    """

    def __init__(self, entries: dict[int, Batches] | None = None):
        self._by_id: dict[int, Batches] = entries or {}

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, producer_id: int) -> Batches:
        return self._by_id.get(producer_id, ())

    def stage(self) -> ChainMap:
        return ChainMap({}, self._by_id)

    def commit(self, layer: ChainMap) -> None:
        self._by_id.update(layer.maps[0])

    def rebuild(self, headers: Iterable[FrameHeader]) -> None:
        """Replay written batches (oldest first), as recovery finds them."""
        for h in headers:
            if is_idempotent(h):
                remember(self._by_id, h, h.base_offset)

    def forget_before(self, offset: int) -> int:
        """Drop producers whose last batch is below ``offset``; return how many."""
        stale = [pid for pid, kept in self._by_id.items() if kept[-1].base_offset < offset]
        for pid in stale:
            del self._by_id[pid]
        return len(stale)

    def to_dict(self) -> dict[int, list[list[int]]]:
        return {pid: [list(b) for b in kept] for pid, kept in self._by_id.items()}

    @classmethod
    def from_dict(cls, data: dict) -> ProducerTable:
        return cls({int(pid): tuple(ProducerBatch(*b) for b in kept) for pid, kept in data.items()})
