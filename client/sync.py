"""Blocking ``Producer`` and ``Consumer``: the async ones, run on a private event loop.

As in kafka-python, each wrapper owns one daemon thread running its own event loop;
a method hands its coroutine to that loop and blocks until it is done, so methods may
be called from any thread. The producer's ``send()`` is the exception: it hands
records over without waiting, so a thread can send hundreds of thousands a second.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from .accumulator import RecordFuture, RecordsFuture
from .consumer import AsyncConsumer
from .errors import ConsumerClosedError, ProducerClosedError, ShoalError
from .producer import AsyncProducer
from .structs import OffsetAndMetadata, Record, RecordMetadata, TopicPartition

__all__ = ["Consumer", "FutureRecordMetadata", "Producer"]

T = TypeVar("T")
# getmany() calls made by the iterator wait this long at most, so close() from
# another thread is noticed.
_POLL_MS = 500
_ITER_CHUNK = 1000
_HANDOFF_LINGER = 0.001


class _LoopThread:
    """An event loop running forever in a daemon thread, until ``stop()``."""

    def __init__(self, name: str, closed: type[ShoalError]):
        self._closed_error = closed
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and return its result (or raise its error)."""
        if self.loop.is_closed():
            coro.close()
            raise self._closed_error("the client is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _started(client: T) -> T:
    await client.start()
    return client


class FutureRecordMetadata:
    """The blocking producer's promise of one record's ``RecordMetadata``.

    Lighter than a ``concurrent.futures.Future`` (no lock per record): all futures of a
    producer wait on its one condition, notified once per acknowledged batch.
    """

    __slots__ = ("_cond", "_record", "_error")

    def __init__(self, cond: threading.Condition):
        self._cond = cond
        self._record: RecordFuture | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._error is not None or (self._record is not None and self._record.done())

    def result(self, timeout: float | None = None) -> RecordMetadata:
        """The record's metadata once acknowledged; raises its error.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._record.result()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._error if self._error is not None else self._record.exception()

    def _wait(self, timeout: float | None) -> None:
        if not self.done():
            with self._cond:
                if not self._cond.wait_for(self.done, timeout):
                    raise TimeoutError(f"record not acknowledged within {timeout}s")

    def __repr__(self) -> str:
        return f"<FutureRecordMetadata {'done' if self.done() else 'pending'}>"


class BatchResult:
    """The blocking producer's promise of a ``send_batch()``'s ``RecordMetadata`` list."""

    def __init__(self, thread: _LoopThread, records: RecordsFuture):
        self._thread = thread
        self._records = records

    def done(self) -> bool:
        return self._records.done()

    def result(self, timeout: float | None = None) -> list[RecordMetadata]:
        """Wait for every record's acknowledgement (raises the first failed batch's error)."""
        return self._thread.call(asyncio.wait_for(_awaited(self._records), timeout))

    def __len__(self) -> int:
        return len(self._records)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class Producer:
    """A blocking ``AsyncProducer``: same arguments, same methods.

    ``send()`` hands the record to the producer's loop thread without waiting for it
    (the loop takes every record handed over since it last looked in one go), and
    returns a ``FutureRecordMetadata``: ``result(timeout)`` gives the ``RecordMetadata``. Errors the async
    ``send()`` would raise (``UnknownTopic``, ``BufferFullError``, ...) are set on that
    future; ``send()`` itself only blocks while ``max_pending`` records wait to be taken,
    which happens when the producer's buffer is full. Records sent from one thread keep
    their order.

    Example::

        with Producer("cluster.yaml") as producer:
            producer.send("orders", b"paid", key="user-1")
            meta = producer.send_and_wait("orders", b"shipped", key="user-1")

    Args:
        bootstrap, **config: as for ``AsyncProducer``.
        max_pending: records handed over and not yet queued before ``send()`` blocks.
    """

    def __init__(self, bootstrap: Any, *, max_pending: int = 10_000, **config: Any):
        self._thread = _LoopThread("shoal-producer", ProducerClosedError)
        try:
            self._producer: AsyncProducer = self._thread.call(_started(AsyncProducer(bootstrap, **config)))
        except BaseException:
            self._thread.stop()
            raise
        self._handoff: deque[tuple] = deque()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_pending)
        self._done = threading.Condition()  # notified when a batch is acknowledged or a record fails
        self._taking: asyncio.Task | None = None  # loop side: the task emptying the handoff
        self._waking = False  # a wake-up of the loop is on its way
        self._closed = False

    def send(self, topic: str, value: bytes | str | None, **kwargs: Any) -> FutureRecordMetadata:
        """Hand one record over (see ``AsyncProducer.send``); returns a future of its metadata.

        Raises:
            ProducerClosedError: the producer is closed.
        """
        if self._closed:
            raise ProducerClosedError("the producer is closed")
        out = FutureRecordMetadata(self._done)
        self._slots.acquire()
        with self._lock:
            self._handoff.append((topic, value, kwargs, out))
            wake, self._waking = not self._waking, True
        if wake:
            self._thread.loop.call_soon_threadsafe(self._take)
        return out

    def _take(self) -> None:
        if self._taking is None or self._taking.done():
            self._taking = self._thread.loop.create_task(self._take_all())

    async def _take_all(self) -> None:
        producer, handoff = self._producer, self._handoff
        lingered = False
        last_batch = None
        while True:
            with self._lock:
                if not handoff:
                    if lingered:
                        self._waking = False
                        return
                    # A sender streaming records would wake this thread for each one;
                    # look again a moment later instead (well within linger_ms).
                    lingered = True
                    item = None
                else:
                    lingered = False
                    item = handoff.popleft()
            if item is None:
                await asyncio.sleep(_HANDOFF_LINGER)
                continue
            topic, value, kwargs, out = item
            try:
                record = await producer.send(topic, value, **kwargs)
            except Exception as exc:
                out._error = exc
                self._notify()
            else:
                out._record = record
                if record.shared is not last_batch:
                    last_batch = record.shared
                    last_batch.add_done_callback(self._notify)
            finally:
                self._slots.release()

    def _notify(self, *_: Any) -> None:
        with self._done:
            self._done.notify_all()

    async def _flush(self, timeout: float | None) -> None:
        while self._taking is not None and not self._taking.done():
            await asyncio.shield(self._taking)
        await self._producer.flush(timeout)

    def send_batch(self, topic: str, values: Iterable[bytes | str | None], **kwargs: Any) -> BatchResult:
        """Queue many records in one call (see ``AsyncProducer.send_batch``), after every
        record already handed over by ``send()``; ``result()`` waits for their metadata.

        Raises:
            ProducerClosedError: the producer is closed.
            UnknownTopic, ValueError: as ``AsyncProducer.send_batch``; nothing was queued.
        """
        if self._closed:
            raise ProducerClosedError("the producer is closed")
        return BatchResult(self._thread, self._thread.call(self._queue_batch(topic, list(values), kwargs)))

    async def _queue_batch(self, topic: str, values: list, kwargs: dict[str, Any]) -> RecordsFuture:
        while self._taking is not None and not self._taking.done():  # keep send() order
            await asyncio.shield(self._taking)
        return await self._producer.send_batch(topic, values, **kwargs)

    def send_and_wait(self, topic: str, value: bytes | str | None, **kwargs: Any) -> RecordMetadata:
        """Send one record and wait for its acknowledgement (raises its error)."""
        return self.send(topic, value, **kwargs).result()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record sent so far is acknowledged or failed."""
        self._thread.call(self._flush(timeout))

    def close(self, timeout: float | None = None) -> None:
        """Flush, close the producer and stop its thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._thread.call(self._flush(timeout))
        finally:
            try:
                self._thread.call(self._producer.close(timeout))
            finally:
                self._thread.stop()

    def __enter__(self) -> "Producer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class Consumer:
    """A blocking ``AsyncConsumer``: same arguments, same methods, and ``for record in consumer``.

    The iterator takes records from the async consumer a chunk at a time; positions
    and ``commit()`` still count only the records it has handed out.

    Example::

        with Consumer("orders", bootstrap="cluster.yaml", group="billing") as consumer:
            for record in consumer:
                handle(record)
                consumer.commit()
    """

    def __init__(self, *topics: str, bootstrap: Any, **config: Any):
        self._thread = _LoopThread("shoal-consumer", ConsumerClosedError)
        self._held: deque[Record] = deque()  # taken from the async consumer, not yet handed out
        try:
            self._consumer: AsyncConsumer = self._thread.call(
                _started(AsyncConsumer(*topics, bootstrap=bootstrap, **config))
            )
        except BaseException:
            self._thread.stop()
            raise

    def assign(self, partitions: Iterable[TopicPartition | tuple[str, int]]) -> None:
        partitions = list(partitions)
        self._held.clear()
        self._thread.call(_call_soon(self._consumer.assign, partitions))

    def assignment(self) -> set[TopicPartition]:
        return self._consumer.assignment()

    def subscribe(self, topics: Iterable[str], *, listener: Any = None) -> None:
        """As ``AsyncConsumer.subscribe``; the listener's methods are plain functions run
        in a worker thread, so they may call this consumer (``commit()`` in
        ``on_partitions_revoked``) while heartbeats go on."""
        topics = list(topics)
        adapter = _ThreadedListener(self, listener)
        self._thread.call(_call_soon(lambda: self._consumer.subscribe(topics, listener=adapter)))

    def group_health(self) -> dict[str, Any] | None:
        return self._consumer.group_health()

    def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        if self._held:
            want = {TopicPartition(*tp) for tp in partitions}
            out: dict[TopicPartition, list[Record]] = {}
            keep: deque[Record] = deque()
            taken = 0
            for record in self._held:
                if (not want or record.topic_partition in want) and (max_records is None or taken < max_records):
                    out.setdefault(record.topic_partition, []).append(record)
                    taken += 1
                else:
                    keep.append(record)
            self._held = keep
            if out:
                return out
        return self._thread.call(
            self._consumer.getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
        )

    def getone(self) -> Record:
        """The next record, waiting as long as it takes."""
        try:
            return next(self)
        except StopIteration:
            raise ConsumerClosedError("the consumer is closed") from None

    def __iter__(self) -> Iterator[Record]:
        return self

    def __next__(self) -> Record:
        while not self._held:
            if self._thread.loop.is_closed():
                raise StopIteration
            chunk = self._thread.call(self._consumer.getmany(timeout_ms=_POLL_MS, max_records=_ITER_CHUNK))
            for records in chunk.values():
                self._held.extend(records)
        return self._held.popleft()

    def _held_positions(self) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        for record in self._held:
            out.setdefault(record.topic_partition, record.offset)
        return out

    def position(self, tp: TopicPartition) -> int:
        held = self._held_positions().get(TopicPartition(*tp))
        return held if held is not None else self._thread.call(self._consumer.position(tp))

    def commit(self, offsets: Mapping[TopicPartition, int | OffsetAndMetadata] | None = None) -> None:
        if offsets is None and self._held:
            offsets = {tp: self.position(tp) for tp in self._consumer.assignment()}
        self._thread.call(self._consumer.commit(offsets))

    def committed(self, tp: TopicPartition) -> OffsetAndMetadata | None:
        return self._thread.call(self._consumer.committed(tp))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._drop_held(tp)
        self._thread.call(self._consumer.seek(tp, offset))

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        self._drop_held(*partitions)
        self._thread.call(self._consumer.seek_to_beginning(*partitions))

    def seek_to_end(self, *partitions: TopicPartition) -> None:
        self._drop_held(*partitions)
        self._thread.call(self._consumer.seek_to_end(*partitions))

    def _drop_held(self, *partitions: TopicPartition) -> None:
        drop = {TopicPartition(*tp) for tp in partitions}
        self._held = deque(r for r in self._held if drop and r.topic_partition not in drop)

    def close(self) -> None:
        """Close the consumer and stop its thread. Idempotent."""
        if self._thread.loop.is_closed():
            return
        try:
            self._thread.call(self._consumer.close())
        finally:
            self._thread.stop()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class _ThreadedListener:
    """Runs a blocking rebalance listener off the loop thread; drops records still held
    for partitions that go."""

    def __init__(self, consumer: Consumer, listener: Any):
        self._consumer = consumer
        self._listener = listener
        if hasattr(listener, "on_partitions_lost"):
            self.on_partitions_lost = self._revoked_or_lost("on_partitions_lost")

    async def _run(self, name: str, partitions: set[TopicPartition]) -> None:
        callback = getattr(self._listener, name, None)
        if callback is not None:
            await asyncio.get_running_loop().run_in_executor(None, callback, partitions)

    async def on_partitions_assigned(self, partitions: set[TopicPartition]) -> None:
        await self._run("on_partitions_assigned", partitions)

    def _revoked_or_lost(self, name: str):
        async def handle(partitions: set[TopicPartition]) -> None:
            await self._run(name, partitions)
            self._consumer._drop_held(*partitions)

        return handle

    async def on_partitions_revoked(self, partitions: set[TopicPartition]) -> None:
        await self._revoked_or_lost("on_partitions_revoked")(partitions)


async def _call_soon(fn: Any, *args: Any) -> Any:
    return fn(*args)
