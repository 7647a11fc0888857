"""Blocking ``Producer`` and ``Consumer``: the async ones, run on a private event loop.

As in kafka-python, each wrapper owns one daemon thread running its own event loop;
a method hands its coroutine to that loop and blocks until it is done. Methods are
safe to call from any thread except the wrapper's own loop thread (from a future's
callback, for example), where waiting would deadlock: that raises RuntimeError.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from collections.abc import Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from .accumulator import RecordFuture
from .consumer import AsyncConsumer
from .producer import AsyncProducer
from .structs import OffsetAndMetadata, Record, RecordMetadata, TopicPartition

__all__ = ["Consumer", "Producer"]

T = TypeVar("T")
# getmany() calls made by the iterator wait this long at most, so close() from
# another thread is noticed.
_POLL_MS = 500
_ITER_CHUNK = 1000


class _LoopThread:
    """An event loop running forever in a daemon thread, until ``stop()``."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and return its result (or raise its error)."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a blocking shoal client cannot be called from its own event loop thread")
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


def _settle(out: concurrent.futures.Future, record: RecordFuture) -> None:
    exc = record.exception()
    if exc is not None:
        out.set_exception(exc)
    else:
        out.set_result(record.result())


class Producer:
    """A blocking ``AsyncProducer``: same arguments, same methods.

    ``send()`` returns once the record is queued, with a ``concurrent.futures.Future``
    of its ``RecordMetadata``.

    Example::

        with Producer("cluster.yaml") as producer:
            producer.send("orders", b"paid", key="user-1")
            meta = producer.send_and_wait("orders", b"shipped", key="user-1")
    """

    def __init__(self, bootstrap: Any, **config: Any):
        self._thread = _LoopThread("shoal-producer")
        try:
            self._producer: AsyncProducer = self._thread.call(_started(AsyncProducer(bootstrap, **config)))
        except BaseException:
            self._thread.stop()
            raise

    def send(self, topic: str, value: bytes | str | None, **kwargs: Any) -> concurrent.futures.Future:
        """Queue one record (see ``AsyncProducer.send``); returns a future of its metadata."""
        out: concurrent.futures.Future = concurrent.futures.Future()
        self._thread.call(self._send(out, topic, value, kwargs))
        return out

    async def _send(self, out: concurrent.futures.Future, topic: str, value: Any, kwargs: dict) -> None:
        record = await self._producer.send(topic, value, **kwargs)
        record.add_done_callback(lambda r: _settle(out, r))

    def send_and_wait(self, topic: str, value: bytes | str | None, **kwargs: Any) -> RecordMetadata:
        """Send one record and wait for its acknowledgement."""
        return self.send(topic, value, **kwargs).result()

    def flush(self, timeout: float | None = None) -> None:
        self._thread.call(self._producer.flush(timeout))

    def close(self, timeout: float | None = None) -> None:
        """Flush, close the producer and stop its thread. Idempotent."""
        if self._thread.loop.is_closed():
            return
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
        self._thread = _LoopThread("shoal-consumer")
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
        return next(self)

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


async def _call_soon(fn: Any, *args: Any) -> Any:
    return fn(*args)
