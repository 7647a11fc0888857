"""``AsyncConsumer``: long-poll fetches per partition, positions in memory, commits to owners.

The consumer keeps no state in the brokers beyond committed offsets: every fetch names
its offset. Each assigned partition has one fetch loop (``fetcher``) that asks the
partition's owner for the records at its fetch offset (a long-poll of
``fetch_max_wait_ms``) and keeps one answer buffered while the next is in flight, so
records are decoded and waiting when the application asks. A partition's position is the offset of the next record the
application will get: the first unread buffered record, else the fetch offset.

Where a partition starts: the group's committed offset, read from the partition's owner
when the partition is assigned (so a consumer started after another one died resumes
where that one committed); without one, ``auto_offset_reset``. Positions then live in
memory and survive broker restarts (a fetch names its offset); a position the log no
longer holds (``OFFSET_OUT_OF_RANGE``) is reset by ``auto_offset_reset`` too.

Group membership: ``subscribe()`` shares the partitions of its topics with the other
consumers of the group (see ``membership``); the assignment then follows the group's
rebalances, and commits carry the member id and generation so that the brokers can
fence a member that lost its partitions.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import ssl
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

from .cluster import Bootstrap, Cluster
from .errors import ConsumerClosedError, IllegalGeneration, ShoalError
from .fetcher import Fetcher, PartitionFetch, stop
from .http import BrokerClient
from .membership import GroupMembership
from .names import check_name
from .records import RecordBatch
from .structs import OffsetAndMetadata, Record, TopicPartition

__all__ = ["AsyncConsumer"]

log = logging.getLogger(__name__)

_RESETS = ("earliest", "latest", "none")


class AsyncConsumer:
    """Reads records from assigned partitions, and commits positions for a group.

    Safe across tasks of one event loop, not across threads (see ``Consumer``).

    Example::

        async with AsyncConsumer("orders", bootstrap="cluster.yaml", group="billing") as consumer:
            async for record in consumer:
                handle(record)
                await consumer.commit()

    Args:
        *topics: read every partition of these topics (or call ``assign()`` instead).
        bootstrap: a broker URL, a list of them, or the path of a cluster.yaml.
        group: the group whose committed offsets are read at start and written by
            ``commit()``; None reads without committing.
        auto_offset_reset: where to start without a committed offset, or when the
            position is out of range: "earliest" (default), "latest", or "none" (raise).
        fetch_max_bytes: bytes one fetch of one partition asks for (default 1 MiB; at
            least one whole batch comes back).
        fetch_max_wait_ms: how long a fetch waits at the end of the log (default 500).
        max_fetches_per_broker: concurrent fetches to one broker (default 32).
        enable_auto_commit: commit positions every ``auto_commit_interval_ms``, on
            ``close()`` and before a revocation: each as of the latest read's start, so
            records the latest read returned are not committed before the next read
            (default False).
        auto_commit_interval_ms: default 5000.
        request_timeout_ms: how long one request (besides the long-poll wait) may take,
            and how long commits and offset look-ups retry (default 30000).
        retry_backoff_ms: the first retry's backoff; doubles per attempt (default 100).
        retry_backoff_max_ms: the backoff's ceiling (default 1000).
        token: bearer token for a cluster with ``auth:`` (sent on every request).
        ssl_context: for ``https://`` brokers, e.g. ``ssl.create_default_context(cafile=...)``.
        session_timeout_ms: with ``subscribe()``: how long the group waits for a silent
            member before giving its partitions to the others (default 10000).
        max_poll_interval_ms: with ``subscribe()``: a consumer whose application does
            not call ``getmany``/``getone`` for this long leaves the group, and joins again
            on its next poll (default 300000).
        group_instance_id: with ``subscribe()``: a stable name that makes this a static
            member: restarted within the session timeout, it gets its partitions back
            without a rebalance, and ``close()`` does not leave the group.
        assignor: with ``subscribe()``: "sticky" (default), "range" or "roundrobin".
        pause_gc: pause the process-wide cyclic garbage collector while msgpack decodes
            a fetched frame and, where ``client/_records.c`` was not compiled, while
            ``getmany()`` builds a partition's ``Record`` list (spans of C code, see
            ``gc_pause``): faster consuming, for an application
            that lets the client touch that global switch (default False: the
            collector is left alone).
    """

    def __init__(
        self,
        *topics: str,
        bootstrap: Bootstrap,
        group: str | None = None,
        auto_offset_reset: str = "earliest",
        fetch_max_bytes: int = 1 << 20,
        fetch_max_wait_ms: int = 500,
        max_fetches_per_broker: int = 32,
        enable_auto_commit: bool = False,
        auto_commit_interval_ms: int = 5000,
        request_timeout_ms: int = 30_000,
        retry_backoff_ms: int = 100,
        retry_backoff_max_ms: int = 1000,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        session_timeout_ms: int = 10_000,
        max_poll_interval_ms: int = 300_000,
        group_instance_id: str | None = None,
        assignor: str = "sticky",
        pause_gc: bool = False,
    ):
        for topic in topics:
            check_name(topic, "topic")
        if group is not None:
            check_name(group, "group")
        if auto_offset_reset not in _RESETS:
            raise ValueError(f"auto_offset_reset must be one of {', '.join(_RESETS)}, got {auto_offset_reset!r}")
        for name, value, low in (
            ("fetch_max_bytes", fetch_max_bytes, 1),
            ("fetch_max_wait_ms", fetch_max_wait_ms, 0),
            ("max_fetches_per_broker", max_fetches_per_broker, 1),
            ("auto_commit_interval_ms", auto_commit_interval_ms, 1),
            ("request_timeout_ms", request_timeout_ms, 1),
            ("retry_backoff_ms", retry_backoff_ms, 0),
            ("retry_backoff_max_ms", retry_backoff_max_ms, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self._topics = tuple(dict.fromkeys(topics))
        self._group = group
        self._auto_commit = auto_commit_interval_ms / 1000 if enable_auto_commit else None
        self._http = BrokerClient(request_timeout_ms=request_timeout_ms, token=token, ssl_context=ssl_context)
        self._cluster = Cluster(bootstrap, self._http, min_refresh_ms=retry_backoff_ms)
        self._group_config = {
            "session_timeout_ms": session_timeout_ms,
            "max_poll_interval_ms": max_poll_interval_ms,
            "group_instance_id": group_instance_id,
            "assignor": assignor,
            "retry_backoff_ms": retry_backoff_ms,
        }
        self._pause_gc = pause_gc
        self._membership: GroupMembership | None = None
        self._listener: Any = None
        self._wanted: list[TopicPartition] = []
        self._parts: dict[TopicPartition, PartitionFetch] = {}
        self._data = asyncio.Event()
        self._committed: dict[TopicPartition, int] = {}
        self._fetcher = Fetcher(
            self._http, self._cluster, group=group, committed=self._committed, data=self._data,
            auto_offset_reset=auto_offset_reset, fetch_max_bytes=fetch_max_bytes, fetch_max_wait_ms=fetch_max_wait_ms,
            max_fetches_per_broker=max_fetches_per_broker, request_timeout_ms=request_timeout_ms,
            retry_backoff_ms=retry_backoff_ms, retry_backoff_max_ms=retry_backoff_max_ms, pause_gc=pause_gc,
        )  # fmt: skip
        self._current: PartitionFetch | None = None
        self._turn = 0  # where in the assignment the next read starts looking (see _rotated)
        # Partition -> its position before the latest read took records from it: those
        # records are the application's, maybe not processed yet (see _consumed).
        self._handed: dict[PartitionFetch, int] = {}
        self._committer: asyncio.Task | None = None
        self._starting: asyncio.Future | None = None
        self._started = False
        self._closed = False

    # --- lifecycle and assignment --------------------------------------------------

    async def start(self) -> None:
        """Read the topology and start fetching. Idempotent; every read calls it too.

        Raises:
            BrokerUnreachable: no bootstrap broker answered.
            UnknownTopic: a topic given to the constructor does not exist.
        """
        if self._closed:
            raise ConsumerClosedError("the consumer is closed")
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        try:
            await asyncio.shield(self._starting)
        except BaseException:
            if self._starting.done():
                self._starting = None
            raise

    async def _start(self) -> None:
        await self._http.start()
        try:
            await self._cluster.refresh()
            if self._topics:
                await self._assign_topics()
            if self._membership is not None:
                await self._membership.start()
        except BaseException:
            await self._http.close()
            raise
        self._started = True
        self._sync_fetchers()
        if self._auto_commit and self._group:
            self._committer = asyncio.get_running_loop().create_task(self._commit_periodically())

    async def _assign_topics(self) -> None:
        wanted = []
        for topic in self._topics:
            n = await self._cluster.partitions(topic)
            wanted.extend(TopicPartition(topic, p) for p in range(n))
        self._wanted = wanted

    def assign(self, partitions: Iterable[TopicPartition | tuple[str, int]]) -> None:
        """Read exactly these partitions from now on (replacing the assignment).

        Partitions kept keep their positions; new ones start from the committed offset.
        A partition the cluster does not have raises from the next read.

        Raises:
            ValueError: the consumer was given topics at construction.
        """
        if self._topics or self._membership is not None:
            raise ValueError(
                "this consumer reads the topics it was constructed with or subscribed to; "
                "assign() is for a consumer made without topics"
            )
        wanted = []
        for tp in partitions:
            topic, partition = tp
            check_name(topic, "topic")
            wanted.append(TopicPartition(topic, partition))
        self._wanted = list(dict.fromkeys(wanted))
        if self._started:
            self._sync_fetchers()

    def assignment(self) -> set[TopicPartition]:
        """The partitions this consumer reads."""
        return set(self._wanted)

    def subscribe(self, topics: Iterable[str], *, listener: Any = None) -> None:
        """Share the partitions of ``topics`` with the other consumers of the group.

        The group's coordinator hands this consumer a share and moves partitions when
        consumers come and go. Each newly assigned partition starts at the group's
        committed offset. ``listener`` may define ``on_partitions_revoked(partitions)``
        (called before partitions are taken away: commit them there),
        ``on_partitions_assigned(partitions)`` and ``on_partitions_lost(partitions)``
        (taken away without a chance to commit), each plain or async. With
        ``enable_auto_commit``, revoked partitions are committed after the listener.

        Raises:
            ValueError: no group, or the consumer already has topics or a subscription.
        """
        group = self._need_group("subscribe")
        if self._topics or self._membership is not None:
            raise ValueError("subscribe() once, on a consumer made without topics")
        if self._wanted:
            raise ValueError("this consumer has an assign()ed set of partitions; use one or the other")
        topics = [check_name(t, "topic") for t in topics]
        if not topics:
            raise ValueError("subscribe() needs at least one topic")
        self._listener = listener
        self._membership = GroupMembership(
            self._http, self._cluster, group, topics,
            on_revoked=self._revoked, on_assigned=self._assigned, on_lost=self._lost, **self._group_config,
        )
        if self._started:
            asyncio.get_running_loop().create_task(self._membership.start())

    def group_health(self) -> dict[str, Any] | None:
        """Last poll, last heartbeat, generation and assignment of a subscribed consumer."""
        return self._membership.health() if self._membership is not None else None

    async def _listen(self, name: str, tps: set[TopicPartition]) -> None:
        callback = getattr(self._listener, name, None)
        if callback is None:
            return
        try:
            result = callback(set(tps))
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("rebalance listener %s failed", name)

    async def _assigned(self, tps: set[TopicPartition]) -> None:
        self._wanted = [*self._wanted, *sorted(tps)]
        if self._started:
            self._sync_fetchers()
        await self._listen("on_partitions_assigned", tps)

    async def _revoked(self, tps: set[TopicPartition]) -> None:
        await self._listen("on_partitions_revoked", tps)
        if self._auto_commit:
            todo = self._auto_commits(tps)
            try:
                await self._commit(self._group, todo)
            except ShoalError as exc:
                log.warning("commit of revoked partitions of group %s failed: %s", self._group, exc)
        self._drop(tps)

    async def _lost(self, tps: set[TopicPartition]) -> None:
        name = "on_partitions_lost" if hasattr(self._listener, "on_partitions_lost") else "on_partitions_revoked"
        await self._listen(name, tps)
        self._drop(tps)

    def _drop(self, tps: set[TopicPartition]) -> None:
        self._wanted = [tp for tp in self._wanted if tp not in tps]
        self._sync_fetchers()

    def _sync_fetchers(self) -> None:
        wanted = set(self._wanted)
        for tp in [tp for tp in self._parts if tp not in wanted]:
            stop(self._parts.pop(tp))
            self._committed.pop(tp, None)
        for tp in self._wanted:
            if tp not in self._parts:
                self._start_fetcher(PartitionFetch(tp, None))

    def _start_fetcher(self, part: PartitionFetch) -> None:
        self._parts[part.tp] = part
        self._fetcher.start(part)

    async def __aenter__(self) -> "AsyncConsumer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def __del__(self, _warn=warnings.warn) -> None:
        if getattr(self, "_started", False) and not self._closed:
            _warn(f"unclosed AsyncConsumer {self!r}: call close()", ResourceWarning, source=self)

    async def close(self) -> None:
        """Stop fetching (committing positions first with auto-commit) and close connections."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._committer is not None:
                self._committer.cancel()
                await asyncio.gather(self._committer, return_exceptions=True)
                try:
                    await self._commit_changed()
                except ShoalError as exc:
                    log.warning("final auto-commit of group %s failed: %s", self._group, exc)
            if self._membership is not None:
                await self._membership.stop()
            await asyncio.gather(*(stop(p) for p in self._parts.values()), return_exceptions=True)
        finally:
            self._parts.clear()
            self._data.set()
            await self._cluster.close()
            await self._http.close()

    # --- reading -------------------------------------------------------------------

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        """Records that have arrived, by partition; waits up to ``timeout_ms`` for some.

        Args:
            *partitions: only these (default: every assigned partition).
            timeout_ms: how long to wait when nothing is buffered; 0 returns at once.
            max_records: at most this many records in all (default: all buffered).

        Raises:
            the first error a partition met, until ``seek()`` or ``assign()`` clears it:
            ``OffsetOutOfRange`` or ``NoOffsetForPartitionError`` with
            ``auto_offset_reset="none"``, ``UnknownTopic``, ``UnknownPartition``,
            ``CorruptRecordError``.
        """
        batches = await self.getbatches(*partitions, timeout_ms=timeout_ms, max_records=max_records)
        return {tp: batch.tolist(pause_gc=self._pause_gc) for tp, batch in batches.items()}

    async def getbatches(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, RecordBatch]:
        """``getmany()`` for high rates: the same records, each partition's as a lazy ``RecordBatch``.

        A ``RecordBatch`` is a sequence of ``Record``: it builds each one when it is read,
        so iterating over it never holds them all at once, and its ``values``, ``keys``,
        ``offsets`` and ``timestamps`` give one field of every record without building
        records at all. Positions move exactly as with ``getmany()``. Arguments and
        errors are those of ``getmany()``.
        """
        if max_records is not None and max_records < 1:
            raise ValueError(f"max_records must be >= 1 or None, got {max_records!r}")
        await self._ensure_started()
        if self._membership is not None:
            self._membership.polled()
        handed = self._new_read()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            parts = self._rotated(self._select(partitions))
            out: dict[TopicPartition, RecordBatch] = {}
            left = max_records
            last = 0
            for k, part in enumerate(parts):
                if part.buffered:
                    handed[part] = part.position
                    chunk = part.take(left)
                    out[part.tp] = chunk
                    last = k
                    if left is not None:
                        left -= len(chunk)
                        if not left:
                            break
            if out:
                self._turn += last + 1  # the next read starts after the last partition read
                return out
            if not await self._wait_for_data(deadline - loop.time()):
                return out

    async def getone(self, *partitions: TopicPartition) -> Record:
        """The next record, waiting as long as it takes (raises as ``getmany`` does)."""
        await self._ensure_started()
        if self._membership is not None:
            self._membership.polled()
        handed = self._new_read()
        while True:
            part = self._current
            if part is not None and part.buffered and (not partitions or part.tp in partitions):
                handed[part] = part.position
                return part.take(1)[0]
            for k, part in enumerate(self._rotated(self._select(partitions))):
                if part.buffered:
                    self._current = part
                    self._turn += k + 1
                    handed[part] = part.position
                    return part.take(1)[0]
            await self._wait_for_data(None)

    def __aiter__(self) -> "AsyncConsumer":
        return self

    async def __anext__(self) -> Record:
        if self._closed:
            raise StopAsyncIteration
        return await self.getone()

    async def _ensure_started(self) -> None:
        if not self._started:
            await self.start()
        if self._closed:
            raise ConsumerClosedError("the consumer is closed")

    def _select(self, partitions: tuple[TopicPartition, ...]) -> list[PartitionFetch]:
        """The partitions to read from, raising the first stored error among them."""
        if partitions:
            parts = []
            for tp in partitions:
                part = self._parts.get(TopicPartition(*tp))
                if part is None:
                    raise ValueError(f"{tp[0]}/{tp[1]} is not assigned to this consumer")
                parts.append(part)
        else:
            parts = list(self._parts.values())
        for part in parts:
            if part.error is not None:
                raise part.error
        return parts

    def _new_read(self) -> dict[PartitionFetch, int]:
        """A read began: the application is done with what earlier reads returned."""
        handed = self._handed
        if handed:
            handed.clear()
        return handed

    def _consumed(self, part: PartitionFetch) -> int | None:
        """``part``'s position as of the latest read's start: what auto-commit may commit.

        The records the latest read returned may still be in the application's hands;
        they count as processed once it reads again (Kafka's consumer commits the same
        way), so a crash never commits a record that was handed out and not processed.
        """
        return self._handed.get(part, part.position)

    def _rotated(self, parts: list[PartitionFetch]) -> list[PartitionFetch]:
        """``parts`` from the ``_turn``-th on, then the rest: a read that took records
        moves ``_turn`` past the last partition it took from, so the next read starts
        with the one after it and a ``max_records`` limit starves no partition."""
        if len(parts) < 2:
            return parts
        at = self._turn % len(parts)
        self._turn = at
        return parts[at:] + parts[:at]

    async def _wait_for_data(self, timeout: float | None) -> bool:
        """Wait for a fetcher to buffer records (or an error); False on time-out."""
        if timeout is not None and timeout <= 0:
            return False
        self._data.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._data.wait()
        except TimeoutError:
            return False
        if self._closed:
            raise ConsumerClosedError("the consumer is closed")
        return True

    # --- positions and commits -----------------------------------------------------

    def _part(self, tp: TopicPartition | tuple[str, int]) -> PartitionFetch:
        part = self._parts.get(TopicPartition(*tp))
        if part is None:
            raise ValueError(f"{tp[0]}/{tp[1]} is not assigned to this consumer")
        return part

    async def position(self, tp: TopicPartition) -> int:
        """Offset of the next record ``getmany``/``getone`` will return for ``tp``.

        Waits for the starting offset (the committed one, or ``auto_offset_reset``).
        """
        await self._ensure_started()
        await asyncio.shield(self._part(tp).started)
        return self._part(tp).position  # seek() may have replaced it meanwhile

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` on; drops what was buffered and clears its error."""
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
        await self._ensure_started()
        old = self._part(tp)
        await asyncio.gather(stop(old), return_exceptions=True)
        if self._current is old:
            self._current = None
        self._start_fetcher(PartitionFetch(old.tp, offset))

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        """Seek to the log start offset of each partition (default: all assigned)."""
        await self._seek_to("log_start_offset", partitions)

    async def seek_to_end(self, *partitions: TopicPartition) -> None:
        """Seek to the high watermark of each partition: only new records are read."""
        await self._seek_to("high_watermark", partitions)

    async def _seek_to(self, key: str, partitions: tuple[TopicPartition, ...]) -> None:
        await self._ensure_started()
        tps = [self._part(tp).tp for tp in partitions] or list(self._parts)
        found = await asyncio.gather(
            *(self._fetcher.retrying(tp, lambda url, tp=tp: self._http.offsets(url, tp.topic, tp.partition)) for tp in tps)
        )
        for tp, bounds in zip(tps, found):
            await self.seek(tp, bounds[key])

    async def committed(self, tp: TopicPartition) -> OffsetAndMetadata | None:
        """The group's committed offset for ``tp`` as its owner has it; None if never committed."""
        group = self._need_group("committed")
        await self._ensure_started()
        tp = TopicPartition(*tp)
        return await self._fetcher.retrying(tp, lambda url: self._http.committed(url, group, tp.topic, tp.partition))

    async def commit(self, offsets: Mapping[TopicPartition, int | OffsetAndMetadata] | None = None) -> None:
        """Commit offsets for the group: the next offset to read, per partition.

        Args:
            offsets: partition -> offset (or ``OffsetAndMetadata``); None commits the
                current position of every assigned partition that has one.

        Raises:
            OffsetOutOfRange: an offset outside ``log_start_offset..high_watermark``.
            ValueError: the consumer has no group.
        """
        group = self._need_group("commit")
        await self._ensure_started()
        if offsets is None:
            todo = {tp: OffsetAndMetadata(p.position) for tp, p in self._parts.items() if p.position is not None}
        else:
            todo = {
                TopicPartition(*tp): off if isinstance(off, OffsetAndMetadata) else OffsetAndMetadata(off)
                for tp, off in offsets.items()
            }
        await self._commit(group, todo)

    async def _commit(self, group: str, todo: dict[TopicPartition, OffsetAndMetadata], *, again: bool = True) -> None:
        membership = self._membership
        member = membership.commit_fields() if membership is not None else None
        results = await asyncio.gather(
            *(
                self._fetcher.retrying(
                    tp, lambda url, tp=tp, om=om: self._http.commit(url, group, tp.topic, tp.partition, om, member=member)
                )
                for tp, om in todo.items()
            ),
            return_exceptions=True,
        )
        retry = {}
        for (tp, om), result in zip(todo.items(), results):
            if isinstance(result, IllegalGeneration) and again and membership is not None:
                # A heartbeat moved the generation on while the commit was on its way:
                # commit again what this member still holds.
                if membership.generation != member["generation"] and tp in membership.assignment:
                    retry[tp] = om
                    continue
                membership.heartbeat_now()
            if isinstance(result, BaseException):
                raise result
            self._committed[tp] = om.offset
            part = self._parts.get(tp)
            start = self._handed.get(part)
            if start is not None and start < om.offset <= part.position:
                # The application committed records the latest read returned: they are
                # processed, and auto-commit must not take the position back before them.
                self._handed[part] = om.offset
        if retry:
            await self._commit(group, retry, again=False)

    def _auto_commits(self, tps: set[TopicPartition] | None = None) -> dict[TopicPartition, OffsetAndMetadata]:
        """What auto-commit stores: each partition's (of ``tps``, default all) consumed
        position, where it differs from the last one committed."""
        todo = {}
        for tp, part in self._parts.items():
            offset = self._consumed(part)
            if offset is not None and (tps is None or tp in tps) and self._committed.get(tp) != offset:
                todo[tp] = OffsetAndMetadata(offset)
        return todo

    async def _commit_changed(self) -> None:
        todo = self._auto_commits()
        if todo:
            await self._commit(self._group, todo)

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._auto_commit)
            try:
                await self._commit_changed()
            except ShoalError as exc:
                log.warning("auto-commit of group %s failed: %s", self._group, exc)

    def _need_group(self, what: str) -> str:
        if self._group is None:
            raise ValueError(f"{what}() needs a group: AsyncConsumer(..., group='name')")
        return self._group

