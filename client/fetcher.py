"""The consumer's fetching: one long-poll loop per assigned partition, and calls to a partition's owner.

Each assigned partition has a ``PartitionFetch``: its fetch offset and the last answer's
records not yet handed out. Its loop asks the partition's owner for the records at the
fetch offset (a long-poll of ``fetch_max_wait_ms``, at most ``max_fetches_per_broker``
at a time per broker) and keeps one answer buffered while the next is in flight, so
records are decoded and waiting when the application asks.

Where a partition starts: the group's committed offset, read from the partition's owner
when the partition is assigned; without one, ``auto_offset_reset``. A position the log
no longer holds (``OFFSET_OUT_OF_RANGE``) is reset by ``auto_offset_reset`` too, once
the records before the jump have been handed out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .cluster import Cluster, backoff_seconds
from .errors import NoOffsetForPartitionError, OffsetOutOfRange, ShoalError, Throttled, UnknownPartition
from .http import BrokerClient
from .records import RecordBatch, decode_batch
from .structs import TopicPartition

__all__ = ["Fetcher", "PartitionFetch", "stop"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class PartitionFetch:
    """Fetch state of one assigned partition; owned by its fetch loop."""

    __slots__ = ("tp", "fetch_offset", "records", "index", "error", "task", "drained", "started")

    def __init__(self, tp: TopicPartition, fetch_offset: int | None):
        self.tp = tp
        self.fetch_offset = fetch_offset
        self.records: RecordBatch | None = None  # the last fetch's, from ``index`` on not yet taken
        self.index = 0
        self.error: BaseException | None = None
        self.task: asyncio.Task | None = None
        self.drained = asyncio.Event()
        self.drained.set()
        self.started: asyncio.Future = asyncio.get_running_loop().create_future()
        if fetch_offset is not None:
            self.started.set_result(None)

    @property
    def buffered(self) -> int:
        return len(self.records) - self.index if self.records is not None else 0

    @property
    def position(self) -> int | None:
        if self.records is not None:
            return self.records.offsets[self.index]
        return self.fetch_offset

    def take(self, limit: int | None) -> RecordBatch:
        """The next ``limit`` buffered records (all by default); call only when some are buffered."""
        records = self.records
        start = self.index
        end = len(records) if limit is None else min(len(records), start + limit)
        chunk = records[start:end] if start or end < len(records) else records
        self.index = end
        if end == len(records):
            self.records = None
            self.index = 0
            self.drained.set()
        return chunk


def stop(part: PartitionFetch) -> asyncio.Future:
    """Cancel a partition's fetch loop; returns the task to await. Waiters on its start move on."""
    if not part.started.done():
        part.started.set_result(None)
    part.task.cancel()
    return part.task


class Fetcher:
    """Runs the fetch loops of one consumer and makes its calls to partition owners.

    Args:
        http, cluster: the consumer's broker client and topology.
        group: the consumer group, whose committed offsets say where partitions start.
        committed: partition -> the offset last committed, filled with what is read.
        data: set whenever a loop buffers records or stops with an error.
        auto_offset_reset, fetch_max_bytes, fetch_max_wait_ms, max_fetches_per_broker,
        request_timeout_ms, retry_backoff_ms, retry_backoff_max_ms, pause_gc: as the
        consumer was given them.
    """

    def __init__(
        self,
        http: BrokerClient,
        cluster: Cluster,
        *,
        group: str | None,
        committed: dict[TopicPartition, int],
        data: asyncio.Event,
        auto_offset_reset: str,
        fetch_max_bytes: int,
        fetch_max_wait_ms: int,
        max_fetches_per_broker: int,
        request_timeout_ms: int,
        retry_backoff_ms: int,
        retry_backoff_max_ms: int,
        pause_gc: bool,
    ):
        self._http = http
        self._cluster = cluster
        self._group = group
        self._committed = committed
        self._data = data
        self._reset = auto_offset_reset
        self._fetch_max_bytes = fetch_max_bytes
        self._fetch_max_wait_ms = fetch_max_wait_ms
        self._max_fetches = max_fetches_per_broker
        self._request_timeout = request_timeout_ms / 1000
        self._backoff = (retry_backoff_ms, retry_backoff_max_ms)
        self._pause_gc = pause_gc
        self._slots: dict[str, asyncio.Semaphore] = {}

    def start(self, part: PartitionFetch) -> None:
        part.task = asyncio.get_running_loop().create_task(self._run(part), name=f"shoal-fetch-{part.tp}")

    async def _run(self, part: PartitionFetch) -> None:
        tp = part.tp
        attempt = 0
        out_of_range: OffsetOutOfRange | None = None
        while True:
            try:
                if part.fetch_offset is None:
                    part.fetch_offset = await self._starting_offset(tp)
                    part.started.set_result(None)
                    log.debug("%s starts at offset %d", tp, part.fetch_offset)
                if out_of_range is not None:
                    offset = await self.retrying(tp, lambda url: self._reset_offset(url, tp, out_of_range))
                    log.warning("%s: offset %d out of range; reset to %s offset %d", tp, part.fetch_offset, self._reset, offset)
                    await part.drained.wait()  # records before the jump are still the application's
                    part.fetch_offset = offset
                    out_of_range = None
                url = await self.owner(tp)
                slots = self._slots.get(url)
                if slots is None:
                    slots = self._slots[url] = asyncio.Semaphore(self._max_fetches)
                async with slots:
                    answer = await self._http.fetch(
                        url, tp.topic, tp.partition, part.fetch_offset,
                        max_bytes=self._fetch_max_bytes, max_wait_ms=self._fetch_max_wait_ms,
                    )
                records, next_offset = decode_batch(
                    tp.topic, tp.partition, answer.body, min_offset=part.fetch_offset, partial=True,
                    pause_gc=self._pause_gc,
                )
            except OffsetOutOfRange as exc:
                if self._reset == "none":
                    self._stop_with(part, exc)
                    return
                out_of_range = exc
                continue
            except ShoalError as exc:
                if not exc.retriable:
                    self._stop_with(part, exc)
                    return
                attempt += 1
                await self._back_off(tp, attempt, exc)
                continue
            except Exception as exc:
                log.exception("fetcher of %s failed", tp)
                self._stop_with(part, exc)
                return
            attempt = 0
            if records:
                await part.drained.wait()
                part.records = records
                part.index = 0
                part.drained.clear()
                self._data.set()
            part.fetch_offset = next_offset

    def _stop_with(self, part: PartitionFetch, exc: BaseException) -> None:
        part.error = exc
        if not part.started.done():
            part.started.set_exception(exc)
            part.started.exception()  # retrieved: the application gets it from getmany()
        self._data.set()

    async def _back_off(self, tp: TopicPartition, attempt: int, exc: ShoalError) -> None:
        delay = backoff_seconds(attempt, *self._backoff)
        if isinstance(exc, Throttled):
            delay = max(delay, exc.retry_after or 0)
        log.warning("%s: retrying in %.0f ms (attempt %d): %s", tp, delay * 1000, attempt + 1, exc)
        if exc.refresh_topology:
            self._cluster.refresh_soon(getattr(exc, "owner_url", None))
        await asyncio.sleep(delay)

    async def owner(self, tp: TopicPartition) -> str:
        """The URL of the broker that serves ``tp`` now (the topology is re-read if none is known)."""
        meta = self._cluster.metadata
        url = meta.owner_url(tp.topic, tp.partition)
        if url is None:
            await self._cluster.refresh()
            await self._cluster.check_partition(tp.topic, tp.partition)
            url = self._cluster.metadata.owner_url(tp.topic, tp.partition)
            if url is None:
                raise UnknownPartition(f"no owner known for {tp}", topic=tp.topic, partition=tp.partition)
        return url

    async def retrying(self, tp: TopicPartition, call: Callable[[str], Awaitable[T]]) -> T:
        """``call(owner_url)``, retrying retriable errors for up to ``request_timeout_ms``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._request_timeout
        attempt = 0
        while True:
            try:
                return await call(await self.owner(tp))
            except ShoalError as exc:
                attempt += 1
                if not exc.retriable or loop.time() >= deadline:
                    raise
                await self._back_off(tp, attempt, exc)

    async def _starting_offset(self, tp: TopicPartition) -> int:
        if self._group is not None:
            committed = await self.retrying(
                tp, lambda url: self._http.committed(url, self._group, tp.topic, tp.partition)
            )
            if committed is not None:
                self._committed[tp] = committed.offset
                return committed.offset
        if self._reset == "none":
            raise NoOffsetForPartitionError(
                f"{tp}: group {self._group!r} has no committed offset and auto_offset_reset is 'none'",
                topic=tp.topic, partition=tp.partition,
            )
        return await self.retrying(tp, lambda url: self._reset_offset(url, tp, None))

    async def _reset_offset(self, url: str, tp: TopicPartition, exc: OffsetOutOfRange | None) -> int:
        key = "log_start_offset" if self._reset == "earliest" else "high_watermark"
        known = getattr(exc, key, None)
        if isinstance(known, int):
            return known
        return (await self._http.offsets(url, tp.topic, tp.partition))[key]
