"""``AsyncProducer``: partition-aware, batching, idempotent, ordered per partition.

``send()`` only queues: each record is encoded into the open batch of its partition
(``accumulator``); one sender task (``sender``) takes ready batches and posts each
straight to its partition's owner, retrying in order and stamping them for idempotence.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate, repeat
from operator import add, sub
from typing import Any

from .accumulator import (
    BATCH_OVERHEAD,
    RECORD_OVERHEAD,
    ProducerBatch,
    RecordAccumulator,
    RecordFuture,
    RecordsFuture,
    record_size,
)
from .cluster import Bootstrap, Cluster
from .errors import (
    BatchTooLarge,
    BufferFullError,
    ProducerClosedError,
    ShoalError,
    ShoalTimeoutError,
    UnknownPartition,
)
from .http import BrokerClient
from .names import check_name
from . import partitioner
from .partitioner import StickyPartitioner, partition_for_key
from .sender import Sender
from .structs import RecordMetadata

__all__ = ["AsyncProducer"]

log = logging.getLogger(__name__)

_MAX_TIMESTAMP = 2**63  # a frame stores timestamps as i64; deltas between two then fit msgpack's ints
_time_ns = time.time_ns
_key_hash = partitioner.key_hash


def _to_bytes(data: Any, what: str) -> bytes:
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


def _check_timestamp(ts: Any) -> None:
    if ts.__class__ is not int:
        raise TypeError(f"timestamp_ms must be an int (ms since the epoch), not {type(ts).__name__}")
    if not 0 <= ts < _MAX_TIMESTAMP:
        raise ValueError(f"timestamp_ms must be between 0 and 2**63-1 (ms since the epoch), not {ts}")


_BYTES_OR_NONE = {bytes, type(None)}


def _bytes_list(items: Sequence[Any], what: str) -> list[bytes | None]:
    """``items`` as a list of bytes or None; converts (per item) only when some are not bytes."""
    items = list(items)
    if not set(map(type, items)) <= _BYTES_OR_NONE:
        items = [v if v is None or v.__class__ is bytes else _to_bytes(v, what) for v in items]
    return items


def _headers(headers: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, bytes] | None:
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = {}
    for name, value in items:
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, not {type(name).__name__}")
        out[name] = value if isinstance(value, bytes) else _to_bytes(value, f"header {name!r}")
    return out or None


class AsyncProducer:
    """Sends records to shoal in batches, straight to each partition's owner.

    Safe across tasks of one event loop, not across threads (see ``Producer``).

    Example::

        async with AsyncProducer("http://127.0.0.1:9091") as producer:
            fut = await producer.send("orders", b"paid", key="user-1")
            meta = await fut  # RecordMetadata(topic='orders', partition=4, offset=17)

    Args:
        bootstrap: a broker URL, a list of them, or the path of a cluster.yaml.
        linger_ms: how long a batch waits for more records before it is sent (default 0:
            at once; records still gather while the partition's request is in flight).
        max_batch_bytes: the largest batch (default 1 MiB; capped by the brokers' limit).
        max_in_flight_per_broker: concurrent produce requests per broker (default 5).
        buffer_memory: bytes of records queued and unacknowledged before ``send()``
            waits (default 32 MiB).
        max_block_ms: how long ``send()`` waits for buffer room before
            ``BufferFullError`` (default 60000).
        request_timeout_ms: how long one produce request may take (default 30000).
        delivery_timeout_ms: how long a record may take from ``send()`` to its
            acknowledgement, retries included (default 120000).
        retry_backoff_ms: the first retry's backoff; it doubles per attempt (default 100).
        retry_backoff_max_ms: the backoff's ceiling (default 1000).
        idempotent: stamp batches with a producer id and sequence so retries are never
            written twice (default True).
        acks: ``"all"`` (default): a send completes once every in-sync replica has the
            record (and the ISR has at least the topic's ``min_insync_replicas``); ``"1"``:
            once the leader wrote it. The same in a cluster without replication.
        partitioner_seed: seed of the keyless (sticky) partitioner, for repeatable tests.
        token: bearer token for a cluster with ``auth:`` (sent on every request).
        ssl_context: for ``https://`` brokers, e.g. ``ssl.create_default_context(cafile=...)``.
    """

    def __init__(
        self,
        bootstrap: Bootstrap,
        *,
        linger_ms: float = 0,
        max_batch_bytes: int = 1 << 20,
        max_in_flight_per_broker: int = 5,
        buffer_memory: int = 32 << 20,
        max_block_ms: int = 60_000,
        request_timeout_ms: int = 30_000,
        delivery_timeout_ms: int = 120_000,
        retry_backoff_ms: int = 100,
        retry_backoff_max_ms: int = 1000,
        idempotent: bool = True,
        acks: str | int = "all",
        partitioner_seed: int | None = None,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ):
        if str(acks) not in ("all", "1", "-1"):
            raise ValueError(f'acks must be "all" or "1", got {acks!r}')
        for name, value, low in (
            ("linger_ms", linger_ms, 0),
            ("max_batch_bytes", max_batch_bytes, BATCH_OVERHEAD + 64),
            ("max_in_flight_per_broker", max_in_flight_per_broker, 1),
            ("buffer_memory", buffer_memory, 1024),
            ("max_block_ms", max_block_ms, 0),
            ("request_timeout_ms", request_timeout_ms, 1),
            ("delivery_timeout_ms", delivery_timeout_ms, 1),
            ("retry_backoff_ms", retry_backoff_ms, 0),
            ("retry_backoff_max_ms", retry_backoff_max_ms, 0),
        ):
            if not isinstance(value, (int, float)) or value < low:
                raise ValueError(f"{name} must be a number >= {low}, got {value!r}")
        self._http = BrokerClient(request_timeout_ms=request_timeout_ms, token=token, ssl_context=ssl_context)
        self._cluster = Cluster(bootstrap, self._http, min_refresh_ms=retry_backoff_ms)
        self._linger_ms = linger_ms
        self._max_batch_bytes = max_batch_bytes
        self._buffer_memory = buffer_memory
        self._max_block = max_block_ms / 1000
        self._sticky = StickyPartitioner(random.Random(partitioner_seed))
        self._acc: RecordAccumulator | None = None
        # send()'s fast paths, emptied whenever the checks they skip could change:
        # topic -> the open batch its keyless records join (the sticky partition's), and
        # topic -> per partition, the open batch its keyed records join (None: none yet).
        self._keyless: dict[str, ProducerBatch] = {}
        self._keyed: dict[str, list[ProducerBatch | None]] = {}
        self._room = asyncio.Event()
        self._sender = Sender(
            self._http, self._cluster, acks="1" if str(acks) == "1" else "all", max_in_flight=max_in_flight_per_broker,
            delivery_timeout=delivery_timeout_ms / 1000, backoff=(retry_backoff_ms, retry_backoff_max_ms),
            idempotent=idempotent, room=self._room, on_new_topology=self._forget_fast_paths, on_death=self._die,
        )  # fmt: skip
        self._wakeup = self._sender.wakeup
        self._accepting = False  # started, not closing, sender alive: send()'s one check
        self._max_record = 0
        self._starting: asyncio.Future | None = None
        self._failure: ShoalError | None = None
        self._closing = False
        self._closed = False
        self._closed_event = asyncio.Event()

    @property
    def producer_id(self) -> int:
        """The current producer id (-1 when not idempotent); changes after a failed batch."""
        return self._sender.producer_id

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Read the topology and start the sender. Idempotent; ``send()`` calls it too.

        Raises:
            BrokerUnreachable: no bootstrap broker answered.
        """
        if self._closing:
            raise ProducerClosedError("the producer is closed")
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        await self._http.start()
        try:
            meta = await self._cluster.refresh()
        except BaseException:
            await self._http.close()
            self._starting = None
            raise
        if meta.max_batch_bytes and meta.max_batch_bytes < self._max_batch_bytes:
            self._max_batch_bytes = meta.max_batch_bytes
        self._max_record = min(self._buffer_memory, self._max_batch_bytes - BATCH_OVERHEAD)
        self._acc = RecordAccumulator(
            max_batch_bytes=self._max_batch_bytes, linger_ms=self._linger_ms, wakeup=self._wakeup.set
        )
        self._sender.start(self._acc)
        self._accepting = True

    async def __aenter__(self) -> "AsyncProducer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def __del__(self, _warn=warnings.warn) -> None:
        if getattr(self, "_acc", None) is not None and not self._closed:
            _warn(f"unclosed AsyncProducer {self!r}: call close()", ResourceWarning, source=self)

    async def flush(self, timeout: float | None = None) -> None:
        """Send every queued record now and wait until each is acknowledged or failed.

        Failures are reported by the records' futures, not here.

        Raises:
            ShoalTimeoutError: ``timeout`` seconds passed first.
        """
        acc = self._acc
        if acc is None or not acc.incomplete:
            return
        pending = [b.future for b in acc.incomplete]
        acc.flushing += 1
        self._wakeup.set()
        try:
            done, not_done = await asyncio.wait(pending, timeout=timeout)
        finally:
            acc.flushing -= 1
        if not_done:
            raise ShoalTimeoutError(f"flush: {len(not_done)} batches still pending after {timeout}s")

    async def close(self, timeout: float | None = None) -> None:
        """Flush, then stop the sender and close connections. Idempotent.

        Records still pending after ``timeout`` seconds (None: until each is
        acknowledged or its delivery time-out passes) fail with ``ProducerClosedError``.
        """
        if self._closing:
            await self._closed_event.wait()
            return
        self._closing = True
        self._accepting = False
        self._forget_fast_paths()
        try:
            if self._sender.running:
                try:
                    await self.flush(timeout)
                except ShoalTimeoutError:
                    log.warning("closing with %d batches unacknowledged after %ss", len(self._acc.incomplete), timeout)
                await self._sender.stop()
            if self._acc is not None:
                self._fail_all(ProducerClosedError("the producer was closed before the record was acknowledged"))
                self._acc.close()
        finally:
            await self._cluster.close()
            await self._http.close()
            self._closed = True
            self._closed_event.set()
            self._room.set()

    # --- send --------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        value: bytes | str | None,
        *,
        key: bytes | str | None = None,
        partition: int | None = None,
        headers: Mapping[str, bytes | str] | Iterable[tuple[str, bytes | str]] | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordFuture:
        """Queue one record; returns as soon as it is queued.

        Args:
            topic: an existing topic.
            value: the record's value (str is sent as UTF-8); None for a tombstone.
            key: decides the partition (Kafka's murmur2) unless ``partition`` is given;
                keyless records go to a sticky random partition.
            partition: an explicit partition number.
            headers: name -> bytes or str.
            timestamp_ms: the record's timestamp; default now.

        Returns:
            An awaitable of the record's ``RecordMetadata``, done once acknowledged.

        Raises:
            UnknownTopic, UnknownPartition: the record has nowhere to go.
            BatchTooLarge: the record alone is larger than a batch may be.
            BufferFullError: the buffer stayed full for ``max_block_ms``.
            ProducerClosedError: the producer is closed, or its sender died.
        """
        # Fast path: a plain record (bytes value, bytes key or none, nothing else) joins
        # the open batch of its partition (keyless: the sticky one), if that batch has
        # room and the buffer too; the batch was opened by the full path below.
        if value.__class__ is bytes and partition is None and headers is None and timestamp_ms is None:
            if key is None:
                batch = self._keyless.get(topic)
                size = len(value) + RECORD_OVERHEAD
            elif key.__class__ is bytes and (opens := self._keyed.get(topic)) is not None:
                batch = opens[_key_hash(key) % len(opens)]
                size = len(key) + len(value) + RECORD_OVERHEAD
            else:
                batch = None
            if batch is not None and batch.open:
                acc = self._acc
                if batch.size + size <= self._max_batch_bytes and acc.buffered + size <= self._buffer_memory:
                    acc.buffered += size
                    return batch.add(_time_ns() // 1_000_000, key, value, None, size)  # cannot fail: bytes, ints
        if not self._accepting:
            await self._check_open()
        if value.__class__ is not bytes and value is not None:
            value = _to_bytes(value, "value")
        if key.__class__ is not bytes and key is not None:
            key = _to_bytes(key, "key")
        if headers is not None:
            headers = _headers(headers)
        if timestamp_ms is not None:
            _check_timestamp(timestamp_ms)
        n = self._cluster.metadata.partitions.get(topic)
        if n is None:
            n = await self._cluster.partitions(check_name(topic, "topic"))
        size = record_size(key, value, headers)
        by = None if partition is not None else self._keyless if key is None else self._keyed  # fast path to fill
        if partition is None:
            if key is None:
                partition = self._sticky.partition(topic, n)
                if not self._acc.has_room((topic, partition), size):
                    partition = self._sticky.on_new_batch(topic, n, partition)
            else:
                partition = partition_for_key(key, n)
        elif partition.__class__ is not int or not 0 <= partition < n:
            raise UnknownPartition(
                f"topic {topic!r} has partitions 0..{n - 1}, not {partition!r}",
                topic=topic, partition=partition, partitions=n,
            )
        if size > self._max_record:
            raise self._too_large(size)
        acc = self._acc
        if acc.buffered + size > self._buffer_memory:
            await self._wait_for_room(size)
        future = acc.append((topic, partition), key, value, headers, timestamp_ms, size)
        if by is self._keyless:
            self._keyless[topic] = future.batch
        elif by is not None:
            opens = self._keyed.get(topic)
            if opens is None or len(opens) != n:
                opens = self._keyed[topic] = [None] * n
            opens[partition] = future.batch
        return future

    async def send_batch(
        self,
        topic: str,
        values: Sequence[bytes | str | None],
        *,
        keys: Sequence[bytes | str | None] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> RecordsFuture:
        """Queue many records in one call: ``send()`` for each, at a fraction of the cost.

        The records go where ``send()`` would put them, in order: to ``partition``, else
        by key, else (keyless) to the sticky partition, moving on when its batch is full.
        All of them get one timestamp. Nothing is queued unless all of them are: the
        call first waits until the buffer has room for the whole lot.

        Args:
            topic: an existing topic.
            values: the records' values (str is sent as UTF-8, None is a tombstone).
            keys: one key per value (None: all keyless).
            partition: an explicit partition for every record.
            timestamp_ms: the records' timestamp; default now.

        Returns:
            An awaitable of the records' ``RecordMetadata`` list, in ``values`` order,
            done once every record is acknowledged; it raises the first failed batch's error.

        Raises:
            As ``send()``; and ValueError when ``keys`` and ``values`` differ in length or
            the records are larger than ``buffer_memory`` together.
        """
        if not self._accepting:
            await self._check_open()
        if keys is not None and len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys for {len(values)} values")
        if timestamp_ms is not None:
            _check_timestamp(timestamp_ms)
        n = self._cluster.metadata.partitions.get(topic)
        if n is None:
            n = await self._cluster.partitions(check_name(topic, "topic"))
        if partition is not None and (partition.__class__ is not int or not 0 <= partition < n):
            raise UnknownPartition(
                f"topic {topic!r} has partitions 0..{n - 1}, not {partition!r}",
                topic=topic, partition=partition, partitions=n,
            )
        values = _bytes_list(values, "value")
        if keys is not None:
            keys = _bytes_list(keys, "key")
            if keys.count(None) == len(keys):
                keys = None
        # ends[i]: summed record_size of records 0..i (C iterators, no bytecode per record)
        sizes = map(len, values) if None not in values else (len(v) if v is not None else 0 for v in values)
        if keys is not None:
            sizes = map(add, sizes, (len(k) if k is not None else 0 for k in keys))
        ends = list(accumulate(map(add, sizes, repeat(RECORD_OVERHEAD))))
        total = ends[-1] if ends else 0
        if total > self._buffer_memory:
            raise ValueError(
                f"{len(values)} records of {total} bytes exceed buffer_memory={self._buffer_memory}: send them in parts"
            )
        if total > self._max_record:  # then one record alone may be too large
            largest = max(map(sub, ends, [0, *ends[:-1]]))
            if largest > self._max_record:
                raise self._too_large(largest)
        acc = self._acc
        if acc.buffered + total > self._buffer_memory:
            await self._wait_for_room(total)
        ts = _time_ns() // 1_000_000 if timestamp_ms is None else timestamp_ms
        loop = asyncio.get_running_loop()
        if keys is not None and partition is None:
            return RecordsFuture(self._append_keyed(topic, n, keys, values, ts), loop)
        runs = []
        at = 0
        while at < len(values):
            if partition is None:
                p = self._sticky.partition(topic, n)
                if not acc.has_room((topic, p), ends[at] - (ends[at - 1] if at else 0)):
                    p = self._sticky.on_new_batch(topic, n, p)
            else:
                p = partition
            run = acc.extend((topic, p), keys, values, at, ends, ts)
            runs.append(run)
            at += run[2]
        if runs and partition is None:
            self._keyless[topic] = runs[-1][0]
        return RecordsFuture(runs, loop)

    def _append_keyed(self, topic: str, n: int, keys: list, values: list, ts: int) -> list:
        """Each record to its key's partition (or the sticky one when keyless); one run per record."""
        acc = self._acc
        runs = []
        for key, value in zip(keys, values):
            size = record_size(key, value, None)
            if key is None:
                p = self._sticky.partition(topic, n)
                if not acc.has_room((topic, p), size):
                    p = self._sticky.on_new_batch(topic, n, p)
            else:
                p = partition_for_key(key, n)
            future = acc.append((topic, p), key, value, None, ts, size)
            runs.append((future.batch, future.index, 1))
        return runs

    async def send_and_wait(self, topic: str, value: bytes | str | None, **kwargs: Any) -> RecordMetadata:
        """``send()`` and wait for the acknowledgement; raises the record's error."""
        return await (await self.send(topic, value, **kwargs))

    async def _check_open(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing:
            raise ProducerClosedError("the producer is closed")
        await self.start()

    def _too_large(self, size: int) -> BatchTooLarge:
        return BatchTooLarge(
            f"a record of about {size} bytes cannot fit in a batch of at most "
            f"{self._max_batch_bytes} bytes (or in buffer_memory={self._buffer_memory})",
            max_bytes=self._max_batch_bytes,
        )

    async def _wait_for_room(self, size: int) -> None:
        """Wait until ``size`` more bytes fit in ``buffer_memory`` (``size`` must fit in it)."""
        acc = self._acc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_block
        acc.flushing += 1  # a blocked sender must not wait out the linger
        self._wakeup.set()
        try:
            while acc.buffered + size > self._buffer_memory:
                await self._check_open()
                self._room.clear()
                remaining = deadline - loop.time()
                try:
                    if remaining <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(remaining):
                        await self._room.wait()
                except TimeoutError:
                    raise BufferFullError(
                        f"buffer_memory={self._buffer_memory} stayed full for max_block_ms={self._max_block * 1000:g}"
                    ) from None
        finally:
            acc.flushing -= 1
        await self._check_open()

    # --- the sender's calls ----------------------------------------------------------

    def _forget_fast_paths(self) -> None:
        """The partitions or owners may have changed: ``send()`` checks them again."""
        self._keyless.clear()
        self._keyed.clear()

    def _die(self, err: ProducerClosedError, cause: BaseException | None = None) -> None:
        err.__cause__ = cause
        self._failure = err
        self._accepting = False
        self._forget_fast_paths()
        self._fail_all(err)
        self._room.set()

    def _fail_all(self, exc: BaseException) -> None:
        if self._acc is not None:
            self._acc.abort(exc)
