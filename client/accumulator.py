"""Per-partition queues of record batches waiting to be sent: the producer's hot path.

A record is msgpack-encoded as it is appended to the open batch of its partition,
by the batch's own ``msgpack.Packer``, in the very form the batch format stores:
``[timestamp_delta, key, value, headers]``. Nothing per record stays behind for the
garbage collector to walk (a kept tuple per record made its collections the largest
cost of a producer whose application holds other objects), and sending a batch only
frames bytes. Each record's future is a view of its batch's single future (batch +
index), resolved all at once when the batch is acknowledged.

Linger is one ``loop.call_at`` wake-up armed for the earliest open batch, never a
timer per record. Batches of a partition leave strictly in order and one at a time
(the partition is muted while its batch is in flight); a batch that must be retried
goes back to the head of its queue with its bytes and sequence unchanged.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Generator, Sequence
from itertools import repeat
from typing import Any

import msgpack

from .records import HEADER_SIZE, array_header, frame_records
from .structs import RecordMetadata, TopicPartition

__all__ = [
    "BATCH_OVERHEAD",
    "RECORD_OVERHEAD",
    "ProducerBatch",
    "RecordAccumulator",
    "RecordFuture",
    "RecordsFuture",
    "record_size",
]

# Upper bounds of the msgpack framing around one record's key and value (array
# header, timestamp delta, two bin headers, nil headers), and around a batch.
RECORD_OVERHEAD = 24
BATCH_OVERHEAD = HEADER_SIZE + 5

_time_ns = time.time_ns
_new_tuple = tuple.__new__  # builds a NamedTuple from a row in C
_new_object = object.__new__


class ProducerBatch:
    """Records for one partition that are sent, acknowledged or failed together.

    Attributes:
        tp: the partition.
        packer: encodes records appended one by one, after ``parts``; None once framed.
        parts: encoded records appended in bulk (``extend``), in order.
        count: how many records ``parts`` and ``packer`` hold.
        error: why the batch cannot be sent (a record failed to encode: msgpack then
            drops what the packer held), raised by ``encode``.
        size: an upper bound of the encoded size of the records, in bytes.
        created: loop time the batch was opened (linger and delivery time-out count from it).
        future: resolves to the base offset, or to the error that failed the batch.
        frame: the encoded frame, set on first send and reused by every retry.
        producer_id, base_sequence: the idempotence stamp of ``frame`` (-1 when none).
        attempts: sends that failed and were retried.
        retry_at: loop time before which a retry must not start.
        open: records may still join it (it is the last of its partition and not sent yet).
    """

    __slots__ = (
        "tp", "packer", "parts", "count", "error", "size", "created", "first_ts", "max_ts", "future",
        "frame", "producer_id", "base_sequence", "attempts", "retry_at", "open",
    )

    def __init__(self, tp: TopicPartition, first_ts: int, created: float, future: asyncio.Future):
        self.tp = tp
        self.packer: msgpack.Packer | None = msgpack.Packer(use_bin_type=True, autoreset=False)
        self.parts: list = []
        self.count = 0
        self.error: BaseException | None = None
        self.size = BATCH_OVERHEAD
        self.created = created
        self.first_ts = first_ts
        self.max_ts = first_ts
        self.future = future
        self.frame: bytes | None = None
        self.producer_id = -1
        self.base_sequence = -1
        self.attempts = 0
        self.retry_at = 0.0
        self.open = True

    def __repr__(self) -> str:
        return f"<ProducerBatch {self.tp} records={self.count} seq={self.base_sequence}>"

    def add(self, ts: int, key: bytes | None, value: bytes | None, headers: dict | None, size: int) -> RecordFuture:
        """Encode one record into the batch (``size`` from ``record_size``; the caller
        checked the room). Raises what msgpack raises for a field it cannot encode."""
        self.packer.pack((ts - self.first_ts, key, value, headers))
        index = self.count
        self.count = index + 1
        if ts > self.max_ts:
            self.max_ts = ts
        self.size += size
        # Built without calling __init__ (a call from C into Python): a third of the
        # future's cost, on the path every send() takes.
        future = _new_object(RecordFuture)
        future._batch = self
        future._index = index
        return future

    def encode(self, producer_id: int = -1, base_sequence: int = -1) -> bytes:
        """Frame the records (once: a retry must resend the very same bytes)."""
        if self.frame is None:
            if self.error is not None:
                raise self.error
            tail = self.packer.getbuffer()
            chunks = [*self.parts, tail] if tail.nbytes or not self.parts else self.parts
            self.frame = frame_records(
                chunks[0] if len(chunks) == 1 else b"".join(chunks),
                record_count=self.count,
                first_timestamp=self.first_ts,
                max_timestamp=self.max_ts,
                producer_id=producer_id,
                base_sequence=base_sequence,
                items_only=True,
            )
            self.producer_id = producer_id
            self.base_sequence = base_sequence
            self.packer = self.parts = None
        return self.frame


class RecordFuture:
    """The awaitable ``RecordMetadata`` of one record that ``send()`` queued.

    A light view of the batch's future: nothing per record is done when the batch is
    acknowledged; the metadata is built when asked for. Supports ``await``,
    ``done()``, ``result()``, ``exception()`` and ``add_done_callback()``, and works
    with ``asyncio.gather``. A record never cancels alone, so there is no ``cancel()``.
    """

    __slots__ = ("_batch", "_index")

    def __init__(self, batch: ProducerBatch, index: int):
        self._batch = batch
        self._index = index

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        base = yield from self._batch.future.__await__()
        return self._metadata(base)

    def _metadata(self, base: int) -> RecordMetadata:
        tp = self._batch.tp
        return RecordMetadata(tp.topic, tp.partition, base + self._index if base >= 0 else -1)

    @property
    def batch(self) -> ProducerBatch:
        """The batch the record is in."""
        return self._batch

    @property
    def index(self) -> int:
        """The record's place in its batch."""
        return self._index

    @property
    def shared(self) -> asyncio.Future:
        """The future the record's whole batch shares (its result is the base offset)."""
        return self._batch.future

    def done(self) -> bool:
        return self._batch.future.done()

    def cancelled(self) -> bool:
        return self._batch.future.cancelled()

    def result(self) -> RecordMetadata:
        """The metadata; raises the batch's error, or InvalidStateError while pending."""
        return self._metadata(self._batch.future.result())

    def exception(self) -> BaseException | None:
        return self._batch.future.exception()

    def add_done_callback(self, fn: Callable[["RecordFuture", "record_size"], Any]) -> None:
        """Call ``fn(self)`` from the event loop once the record is acknowledged or failed."""
        self._batch.future.add_done_callback(lambda _: fn(self))

    def __repr__(self) -> str:
        return f"<RecordFuture {self._batch.tp}#{self._index} {'done' if self.done() else 'pending'}>"


class RecordsFuture:
    """The awaitable ``list[RecordMetadata]`` of the records one ``send_batch()`` queued.

    Holds ``(batch, first index, count)`` runs instead of a future per record, and is
    done once every batch holding its records is. Awaiting it (or ``result()``) gives
    the metadata in the order the records were given, or raises the error of the first
    run that failed. ``done()``, ``exception()`` and ``add_done_callback()`` work as on
    a future; ``wait()`` waits without building the metadata list.
    """

    __slots__ = ("_runs", "_future")

    def __init__(self, runs: list[tuple[ProducerBatch, int, int]], loop: asyncio.AbstractEventLoop):
        self._runs = runs
        batches = list({id(b): b.future for b, _, _ in runs}.values())
        if len(batches) == 1:
            self._future = batches[0]
        else:
            self._future = loop.create_future()
            if not batches:
                self._future.set_result(None)
            pending = [len(batches)]

            def one_done(_: asyncio.Future) -> None:
                pending[0] -= 1
                if not pending[0] and not self._future.done():
                    self._future.set_result(None)

            for fut in batches:
                fut.add_done_callback(one_done)

    def __len__(self) -> int:
        return sum(count for _, _, count in self._runs)

    def __await__(self) -> Generator[Any, None, list[RecordMetadata]]:
        yield from self._future.__await__()
        return self.result()

    async def wait(self) -> None:
        """Wait until every record is acknowledged or failed; raises nothing."""
        await asyncio.wait([self._future])

    def done(self) -> bool:
        return self._future.done()

    def exception(self) -> BaseException | None:
        """The first failed run's error; None when every record was stored.

        Raises InvalidStateError while pending.
        """
        if not self._future.done():
            raise asyncio.InvalidStateError("records are still pending")
        for batch, _, _ in self._runs:
            exc = batch.future.exception()
            if exc is not None:
                return exc
        return None

    def result(self) -> list[RecordMetadata]:
        """The records' metadata in send order; raises the first error, or InvalidStateError while pending."""
        exc = self.exception()
        if exc is not None:
            raise exc
        out: list[RecordMetadata] = []
        for batch, start, count in self._runs:
            topic, partition = batch.tp
            base = batch.future.result()
            offsets = range(base + start, base + start + count) if base >= 0 else repeat(-1, count)
            rows = zip(repeat(topic, count), repeat(partition, count), offsets)
            out.extend(map(_new_tuple, repeat(RecordMetadata, count), rows))
        return out

    def add_done_callback(self, fn: Callable[["RecordsFuture"], Any]) -> None:
        """Call ``fn(self)`` from the event loop once every record is acknowledged or failed."""
        self._future.add_done_callback(lambda _: fn(self))

    def __repr__(self) -> str:
        return f"<RecordsFuture {len(self)} records {'done' if self.done() else 'pending'}>"


class RecordAccumulator:
    """The batches a producer has queued and not yet seen acknowledged.

    Not thread-safe: one event loop. Batch sizes are upper bounds computed from
    ``len(key) + len(value)`` plus fixed overheads, so a sealed batch never exceeds
    ``max_batch_bytes``.

    Args:
        max_batch_bytes: a batch is closed before it would grow beyond this.
        linger_ms: how long an open batch may wait for more records.
        wakeup: called (from the loop) when some batch may have become sendable.
    """

    def __init__(self, *, max_batch_bytes: int, linger_ms: float, wakeup: Callable[[], None]):
        self.max_batch_bytes = max_batch_bytes
        self.linger = linger_ms / 1000
        self._wakeup = wakeup
        self._loop = asyncio.get_running_loop()
        self.queues: dict[tuple[str, int], deque[ProducerBatch]] = {}
        self._open: dict[tuple[str, int], ProducerBatch] = {}  # the last batch of a queue, while it takes records
        self.muted: set[tuple[str, int]] = set()
        self.incomplete: set[ProducerBatch] = set()
        self.buffered = 0
        self.flushing = 0  # flush() callers and send() callers blocked on memory: linger is off
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._pack = msgpack.Packer(use_bin_type=True).pack  # -> bytes, for extend()

    def has_room(self, tp: tuple[str, int], size: int) -> bool:
        """Whether a record of ``size`` bytes would join an open batch of ``tp``."""
        batch = self._open.get(tp)
        return batch is not None and batch.size + size <= self.max_batch_bytes

    def append(
        self,
        tp: tuple[str, int],
        key: bytes | None,
        value: bytes | None,
        headers: dict[str, bytes] | None,
        timestamp_ms: int | None,
        size: int,
    ) -> RecordFuture:
        """Queue one record (already bytes, ``size`` from ``record_size``); never blocks.

        Raises what msgpack raises for a field it cannot encode; the batch then fails.
        """
        ts = _time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms
        batch = self._open.get(tp)
        if batch is None or batch.size + size > self.max_batch_bytes:
            batch = self._new_batch(tp, ts)
        try:
            future = batch.add(ts, key, value, headers, size)
        except Exception as exc:
            batch.error = exc
            batch.open = False
            del self._open[tp]
            self._wakeup()
            raise
        self.buffered += size
        return future

    def extend(
        self,
        tp: tuple[str, int],
        keys: Sequence[bytes | None] | None,
        values: Sequence[bytes | None],
        start: int,
        ends: Sequence[int],
        ts: int,
    ) -> tuple[ProducerBatch, int, int]:
        """Queue records ``start..`` of ``values`` (and ``keys``; None: keyless) for ``tp``.

        As many as fit go to the open batch of ``tp`` (a new one when it has no room
        for the first), at least one. ``ends[i]`` is the summed ``record_size`` of
        records ``0..i``, so the records that fit are found by bisection; they are
        encoded with one msgpack call. Never blocks. Returns ``(batch, index of the
        first record in it, count)``.
        """
        before = ends[start - 1] if start else 0
        batch = self._open.get(tp)
        if batch is None or batch.size + ends[start] - before > self.max_batch_bytes:
            batch = self._new_batch(tp, ts)
        stop = max(start + 1, bisect_right(ends, before + self.max_batch_bytes - batch.size, start))
        count = stop - start
        delta = ts - batch.first_ts
        part = values[start:stop] if start or stop < len(values) else values
        # One tuple per record, of atomic values: untracked by the first collection it meets.
        rows = list(zip(repeat(delta, count), repeat(None, count) if keys is None else keys[start:stop], part,
                        repeat(None, count)))  # fmt: skip
        packed = self._pack(rows)
        del rows
        singles = batch.packer.bytes()
        if singles:
            batch.parts.append(singles)
            batch.packer.reset()
        batch.parts.append(memoryview(packed)[len(array_header(count)) :])
        first = batch.count
        batch.count += count
        if ts > batch.max_ts:
            batch.max_ts = ts
        size = ends[stop - 1] - before
        batch.size += size
        self.buffered += size
        return batch, first, count

    def _new_batch(self, tp: tuple[str, int], ts: int) -> ProducerBatch:
        loop = self._loop
        now = loop.time()
        batch = ProducerBatch(TopicPartition(*tp), ts, now, loop.create_future())
        self.incomplete.add(batch)
        full = self._open.get(tp)
        if full is not None:
            full.open = False
        self._open[tp] = batch
        q = self.queues.get(tp)
        if q is None:
            self.queues[tp] = q = deque()
        q.append(batch)
        if len(q) > 1:
            self._wakeup()  # the one before is full: it need not linger
        else:
            self.arm(now + self.linger)
        return batch

    def arm(self, when: float) -> None:
        """Make sure the sender wakes by loop time ``when``."""
        if self._timer is not None:
            if self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer = None
        self._wakeup()

    def ready(self, now: float) -> list[ProducerBatch]:
        """Head batches that may be sent now, from partitions with nothing in flight.

        Arms the wake-up for the next batch that will become sendable.
        """
        out = []
        next_at = None
        linger_off = self.flushing > 0
        for tp, q in self.queues.items():
            if tp in self.muted:
                continue
            batch = q[0]
            if batch.retry_at > now:
                at = batch.retry_at
            elif linger_off or batch.frame is not None or len(q) > 1 or batch.created + self.linger <= now:
                out.append(batch)
                continue
            else:
                at = batch.created + self.linger
            if next_at is None or at < next_at:
                next_at = at
        if next_at is not None:
            self.arm(next_at)
        return out

    def pop(self, batch: ProducerBatch) -> None:
        """Take the head batch ``batch`` out to send it; its partition is muted meanwhile."""
        key = (batch.tp.topic, batch.tp.partition)
        q = self.queues[key]
        q.popleft()
        if not q:
            del self.queues[key]
        if batch.open:
            batch.open = False
            del self._open[key]
        self.muted.add(key)

    def unmute(self, tp: TopicPartition) -> None:
        self.muted.discard((tp.topic, tp.partition))

    def requeue(self, batch: ProducerBatch) -> None:
        """Put a batch to retry back at the head of its partition, due at ``batch.retry_at``."""
        key = (batch.tp.topic, batch.tp.partition)
        q = self.queues.get(key)
        if q is None:
            self.queues[key] = q = deque()
        q.appendleft(batch)
        self.arm(batch.retry_at)

    def complete(self, batch: ProducerBatch, base_offset: int) -> None:
        """The batch is acknowledged at ``base_offset`` (-1: stored, offset unknown)."""
        self._release(batch)
        if not batch.future.done():
            batch.future.set_result(base_offset)

    def fail(self, batch: ProducerBatch, exc: BaseException) -> None:
        """The batch is given up: every record's future raises ``exc``."""
        self._release(batch)
        if not batch.future.done():
            batch.future.set_exception(exc)

    def _release(self, batch: ProducerBatch) -> None:
        if batch in self.incomplete:
            self.incomplete.discard(batch)
            self.buffered -= batch.size - BATCH_OVERHEAD

    def abort(self, exc: BaseException) -> None:
        """Fail every batch not yet acknowledged, queued or in flight, with ``exc``."""
        self.queues.clear()
        for batch in self._open.values():
            batch.open = False
        self._open.clear()
        for batch in list(self.incomplete):
            self.fail(batch, exc)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def record_size(key: bytes | None, value: bytes | None, headers: dict[str, bytes] | None) -> int:
    """Upper bound of the bytes one record adds to a batch."""
    size = RECORD_OVERHEAD
    if key is not None:
        size += len(key)
    if value is not None:
        size += len(value)
    if headers:
        size += 5 + sum(len(k.encode()) + len(v) + 10 for k, v in headers.items())
    return size
