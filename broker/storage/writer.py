"""Group commit: the one task that writes a partition's appends.

``append()`` queues the (already validated) body and waits. The writer task takes the
first pending append, lingers up to ``linger_ms`` / ``linger_bytes`` for more (never for a
follower's replicated append, which has no company to wait for), checks
producer sequences, assigns offsets by patching each frame's base offset and leader
epoch, writes the whole group with one ``pwritev``, applies the flush policy, and only
then moves the log end (and, unless the log is replicated, the high watermark) and
resolves every waiter. A replicated append (a follower storing the leader's frames)
is written verbatim: its offsets must continue the log.

Before the first frame of a new leader epoch is written, the epoch is recorded in the
log's leader-epoch cache (``leader_epochs``).

A write that fails (a full disk, no file descriptor left for a new segment) fails the
appends of its group with STORAGE_FULL (or INTERNAL for other errors), leaves nothing
half-written, and the writer carries on with the next group: a later write succeeds
once the cause is gone. Until then ``error`` names the failure, for the health check.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from shoal.client.errors import InternalError, ShoalApiError, StorageFull, Throttled
from shoal.client.records import FrameHeader, patched_prefix
from shoal.client.records import now_ms as current_ms

from .durable import is_disk_full
from .producer_state import check_sequence, is_idempotent, remember
from .segment import MAX_POSITION, Segment

if TYPE_CHECKING:
    from .partition_log import PartitionLog

log = logging.getLogger(__name__)

_NO_FILES = (errno.EMFILE, errno.ENFILE)  # a roll cannot open its new segment


class AppendResult(NamedTuple):
    """Where an append landed. ``duplicate``: every batch was a retried one, not written again."""

    base_offset: int
    last_offset: int
    duplicate: bool = False


@dataclass
class LogStats:
    """Counters of one log, for metrics and for tests of group commit."""

    appends: int = 0  # append() calls resolved with a result
    batches: int = 0  # frames written
    writes: int = 0  # pwritev groups
    bytes_written: int = 0
    fsyncs: int = 0
    duplicates: int = 0  # frames recognised as retried duplicates
    rolls: int = 0
    throttled: int = 0
    write_errors: int = 0  # groups refused because a write or a roll failed
    lingers: int = 0  # groups that waited up to linger_ms for company


@dataclass(eq=False)
class _Pending:
    body: bytes
    headers: list[FrameHeader]
    size: int
    records: int
    future: asyncio.Future
    replicated: bool = False
    result: AppendResult | None = None
    placed: list = field(default_factory=list)  # (base_offset, size, max_timestamp, position)


class GroupWriter:
    """Orders and writes the appends of one ``PartitionLog``. Use from the log's event loop."""

    def __init__(self, plog: PartitionLog):
        self._log = plog
        self._queue: deque[_Pending] = deque()
        self.queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._linger_full = asyncio.Event()
        self._inflight: list[_Pending] = []
        self._accepting = True
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # held while a group is written, or by exclusive()
        self.failure: BaseException | None = None  # the writer task died of it
        self.error: str | None = None  # the last write failed so; None once one succeeds
        self._new_epochs: list[tuple[int, int]] = []  # leader epochs the group being written begins

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"shoal-writer-{self._log.name}")

    async def stop(self) -> None:
        """Write what is queued, then end the task; later appends are refused."""
        self._accepting = False
        self._wakeup.set()
        self._linger_full.set()
        if self._task is not None:
            await asyncio.shield(self._task)

    def exclusive(self) -> asyncio.Lock:
        """``async with writer.exclusive():`` no group is being written meanwhile."""
        return self._lock

    @property
    def running(self) -> bool:
        return self._accepting and self.failure is None

    def submit(self, body: bytes, headers: list[FrameHeader], *, replicated: bool = False) -> asyncio.Future:
        """Queue one append; the future resolves with its AppendResult.

        ``replicated``: the frames are the leader's, stored as they are.

        Raises:
            Throttled: more than ``max_queue_bytes`` are waiting to be written.
        """
        plog = self._log
        size = len(body)
        cfg = plog.config
        if self.queued_bytes and self.queued_bytes + size > cfg.max_queue_bytes:
            plog.stats.throttled += 1
            raise Throttled(f"{plog.name} has {self.queued_bytes} bytes waiting to be written", retry_after=1)
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(body, headers, size, sum(h.record_count for h in headers), future, replicated))
        self.queued_bytes += size
        if self.queued_bytes >= cfg.linger_bytes:
            self._linger_full.set()
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if not self._accepting:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._linger()
                async with self._lock:
                    await self._write_group()
        except asyncio.CancelledError:
            self._fail_pending(InternalError(f"the writer of {self._log.name} was cancelled"))
            raise
        except BaseException as exc:
            log.exception("the writer of %s failed", self._log.name)
            self.failure = exc
            self.error = f"the writer failed: {exc!r}"
            self._fail_pending(exc)

    def _fail_pending(self, exc: BaseException) -> None:
        for p in (*self._inflight, *self._queue):
            if not p.future.done():
                p.future.set_exception(exc)
        self._inflight = []
        self._queue.clear()
        self.queued_bytes = 0

    async def _linger(self) -> None:
        cfg = self._log.config
        if cfg.linger_ms <= 0 or self.queued_bytes >= cfg.linger_bytes or not self._accepting:
            return
        if self._queue[0].replicated:
            # A follower's copy never has company: its one fetcher appends what a fetch
            # brought and waits for that write before fetching again. Lingering would
            # only delay the fetch that reports the new log end to the leader (and so
            # every acks=all produce waiting on the high watermark).
            return
        self._log.stats.lingers += 1
        self._linger_full.clear()
        try:
            async with asyncio.timeout(cfg.linger_ms / 1000):
                await self._linger_full.wait()
        except TimeoutError:
            pass

    def _needs_roll(self, active: Segment, group_bytes: int, next_offset: int, p: _Pending) -> bool:
        """Must ``p`` go to a new segment? Never for an empty one: a huge body gets its own."""
        end = active.size + group_bytes
        if end == 0:
            return False
        return (
            end + p.size > self._log.config.segment_bytes
            or end + p.size > MAX_POSITION
            or next_offset + p.records - active.base_offset > MAX_POSITION
        )

    def _take_group(self, active: Segment, layer, iov: list) -> tuple[list[_Pending], int, int, Segment]:
        """Pop the appends of the next group (rolling first if the first needs it) and place them."""
        cfg = self._log.config
        group: list[_Pending] = []
        self._inflight = group  # so a writer crash fails them too
        nbytes = 0
        next_offset = active.next_offset
        now = current_ms()
        epochs: list[tuple[int, int]] = []
        while self._queue:
            p = self._queue[0]
            if group and nbytes + p.size > cfg.linger_bytes:
                break
            if self._needs_roll(active, nbytes, next_offset, p):
                if group:
                    break
                active = self._log.roll()  # OSError: nothing popped, nothing placed
                next_offset = active.next_offset
            self._queue.popleft()
            self.queued_bytes -= p.size
            if p.future.done():  # its caller went away before the write
                continue
            group.append(p)
            try:
                next_offset, written = self._place(p, layer, next_offset, active.size + nbytes, iov, now, epochs)
            except ShoalApiError as exc:
                group.pop()
                p.future.set_exception(exc)
                continue
            nbytes += written
        self._new_epochs = epochs
        return group, nbytes, next_offset, active

    async def _write_group(self) -> None:
        """Take queued appends, write them with one pwritev, flush, then publish."""
        plog = self._log
        layer = plog.producers.stage()
        iov: list = []
        try:
            group, nbytes, next_offset, active = self._take_group(plog.active_segment, layer, iov)
        except OSError as exc:  # the roll failed: refuse the append that needed it, retry with the next
            head = self._queue.popleft()
            self.queued_bytes -= head.size
            self._refuse([head], exc, "open a new segment for")
            return
        if not group:
            return
        if nbytes:
            position = active.size
            try:
                for epoch, start in self._new_epochs:  # once per epoch: a small file, fsynced in place
                    plog.epochs.assign(epoch, start)
                active.write(iov, nbytes)
                if plog.config.flush == "always":
                    await plog.flusher.sync(next_offset)
            except OSError as exc:
                if active.size != position:
                    active.truncate(position)
                self._refuse(group, exc, "write")
                return
            for p in group:
                for placed in p.placed:
                    active.index_batch(*placed)
            active.persist_indexes()
            active.next_offset = next_offset
            plog.stats.writes += 1
            plog.stats.bytes_written += nbytes
        plog.producers.commit(layer)
        self._inflight = []
        self.error = None
        plog.publish(next_offset, active.size, nbytes)
        stats = plog.stats
        for p in group:
            stats.appends += 1
            stats.batches += len(p.placed)
            stats.duplicates += len(p.headers) - len(p.placed)
            if not p.future.done():
                p.future.set_result(p.result)
        if nbytes and plog.config.flush != "always":
            plog.flusher.written()

    def _place(
        self, p: _Pending, layer, next_offset: int, position: int, iov: list, now: int, epochs: list
    ) -> tuple[int, int]:
        """Check sequences and assign offsets for one append (all or nothing).

        Adds the frames to ``iov`` (the 16 patched bytes of base offset, length and
        leader epoch, then a view of the rest of the frame: no copy of the body; a
        replicated frame whole) and returns the next offset and the bytes added. New
        leader epochs go to ``epochs`` as ``(epoch, start offset)``.
        """
        item = layer.new_child()
        view = memoryview(p.body)
        at = 0
        added: list = []
        placed: list = []
        new_epochs: list = []
        latest = epochs[-1][0] if epochs else self._log.epochs.latest_epoch
        first = last = None
        duplicates = 0
        written = 0
        for h in p.headers:
            size = h.size
            if p.replicated:
                if h.base_offset != next_offset:
                    raise InternalError(f"{self._log.name}: replicated batch at {h.base_offset}, the log ends at {next_offset}")
                epoch = h.leader_epoch
                added.append(view[at : at + size])
            else:
                epoch = self._log.leader_epoch
            if is_idempotent(h):
                original = None if p.replicated else check_sequence(item.get(h.producer_id), h.producer_id, h)
                if original is not None:
                    duplicates += 1
                    first = original.base_offset if first is None else first
                    last = original.last_offset
                    at += size
                    continue
                remember(item, h, next_offset, now)
            if epoch > latest:
                new_epochs.append((epoch, next_offset))
                latest = epoch
            if not p.replicated:
                added.append(patched_prefix(next_offset, h.length, epoch))
                added.append(view[at + 16 : at + size])
            placed.append((next_offset, size, h.max_timestamp, position + written))
            first = next_offset if first is None else first
            last = next_offset + h.record_count - 1
            next_offset += h.record_count
            written += size
            at += size
        layer.maps[0].update(item.maps[0])
        iov.extend(added)
        epochs.extend(new_epochs)
        p.placed = placed
        p.result = AppendResult(first, last, duplicates == len(p.headers))
        return next_offset, written

    def _refuse(self, group: list[_Pending], exc: OSError, what: str) -> None:
        """Fail a group whose write (or roll) failed; nothing of it was written."""
        err = self._write_error(exc, what)
        self._log.stats.write_errors += 1
        self.error = str(err)
        for p in group:
            if not p.future.done():
                p.future.set_exception(err)
        self._inflight = []

    def _write_error(self, exc: OSError, what: str) -> ShoalApiError:
        plog = self._log
        where = plog.name
        path = plog.active_segment.log_path
        if is_disk_full(exc) or exc.errno in _NO_FILES:
            log.warning("cannot %s %s in %s: %s; nothing written", what, where, path.parent, exc)
            if exc.errno in _NO_FILES:
                return StorageFull(f"cannot {what} {where}: {exc.strerror}")
            return StorageFull(f"no space to write {where}: {exc.strerror}")
        log.error("cannot %s %s in %s: %s; nothing written", what, where, path.parent, exc)
        return InternalError(f"cannot write {where}: {exc.strerror}")
