"""The log of one partition: its segments, a group-committing writer, and reads.

Writes: ``append()`` queues the (already validated) body and waits. One writer task
per partition takes the first pending append, lingers up to ``linger_ms`` /
``linger_bytes`` for more, checks producer sequences, assigns offsets by patching
each frame's base offset, writes the whole group with one ``pwritev``, applies the
flush policy, and only then moves the high watermark and resolves every waiter.

Reads: ``read()`` serves whole stored frames below the high watermark, byte for
byte. It binary-searches a snapshot of the segment list, so a retention delete that
swaps the list cannot break it. Reads run on the event loop (see ``segment``).

Crash safety: the high watermark only covers whole frames already written (and
fsynced under ``flush="always"``). After a kill -9, start-up recovery checks the
tail of the active segment and cuts a torn or corrupt last frame, so a reader never
sees one. What a crash may lose depends on ``flush``: nothing acknowledged under
``always``; under ``interval`` at most ``flush_interval_ms`` of appends, and only if
the machine (not just the process) goes down; under ``never``, whatever the OS had
not yet written.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgpack

from shoal.client.errors import InternalError, OffsetOutOfRange, ShoalApiError, StorageFull, Throttled
from shoal.client.records import FrameHeader, base_offset_bytes, validate_frames
from shoal.client.records import now_ms as current_ms
from shoal.router.topology import FLUSH_POLICIES

from .producers import ProducerTable, check_sequence, is_idempotent, remember
from .segment import MAX_POSITION, OpenSegments, Segment

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_SEGMENT_BYTES = 2**31 - 1  # positions in the index are u32; leave room for one more body
CLEAN_SHUTDOWN = "clean-shutdown"
_sync = getattr(os, "fdatasync", os.fsync)
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """How one partition's log is written, flushed and trimmed.

    Attributes:
        segment_bytes: roll to a new segment when an append would take the active one
            past this size (a single append larger than this gets a segment of its own).
        index_interval_bytes: bytes of frames between two sparse index entries.
        flush: ``"always"``: fsync before an append is acknowledged; ``"interval"``:
            fsync at most ``flush_interval_ms`` after a write (and each sealed segment
            on roll); ``"never"``: leave it to the OS (fsync only at stop).
        flush_interval_ms: the delay of the background fsync under ``"interval"``.
        retention_ms: delete sealed segments whose newest timestamp is older; None keeps.
        retention_bytes: delete the oldest sealed segments while the log is larger; None keeps.
        linger_ms: how long the writer waits for more appends to join a write group.
        linger_bytes: a group this large is written without waiting; also caps a group.
        max_queue_bytes: pending append bytes beyond which ``append`` raises THROTTLED.
    """

    segment_bytes: int = 128 * MiB
    index_interval_bytes: int = 4096
    flush: str = "interval"
    flush_interval_ms: int = 1000
    retention_ms: int | None = None
    retention_bytes: int | None = None
    linger_ms: float = 1
    linger_bytes: int = 1 * MiB
    max_queue_bytes: int = 64 * MiB

    def __post_init__(self) -> None:
        if self.flush not in FLUSH_POLICIES:
            raise ValueError(f"flush must be one of {', '.join(FLUSH_POLICIES)}, got {self.flush!r}")
        if not 1 <= self.segment_bytes <= MAX_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes must be between 1 and {MAX_SEGMENT_BYTES}, got {self.segment_bytes}")
        for name in ("index_interval_bytes", "flush_interval_ms", "linger_bytes", "max_queue_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.linger_ms < 0:
            raise ValueError(f"linger_ms must not be negative, got {self.linger_ms}")
        for name in ("retention_ms", "retention_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or None, got {value}")


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


@dataclass(eq=False)
class _Pending:
    body: bytes
    headers: list[FrameHeader]
    size: int
    records: int
    future: asyncio.Future
    result: AppendResult | None = None
    placed: list = field(default_factory=list)  # (base_offset, size, max_timestamp, position)


class _View(NamedTuple):
    """An immutable snapshot of the segment list, swapped whole on roll and delete."""

    bases: tuple[int, ...]
    segments: tuple[Segment, ...]


class PartitionLog:
    """The append-only log of one partition, in ``directory``.

    Not thread-safe: every method runs on the event loop that called ``start()``.
    ``append`` may be awaited by any number of tasks; one internal writer task
    orders and writes their batches.

    Example::

        log = PartitionLog(Path("data/orders-0"), "orders", 0, LogConfig())
        await log.start()
        result = await log.append(body, validate_frames(body))
        frames = log.read(result.base_offset, 1 << 20)
        await log.stop()
    """

    def __init__(
        self,
        directory: Path,
        topic: str,
        partition: int,
        config: LogConfig,
        *,
        open_segments: OpenSegments | None = None,
    ):
        self.directory = Path(directory)
        self.topic = topic
        self.partition = partition
        self._config = config
        self._open_segments = open_segments if open_segments is not None else OpenSegments(capacity=4)
        self.stats = LogStats()
        self._view = _View((), ())
        self._hw = 0
        self._log_start = 0
        self._readable_end = 0  # bytes of the active segment below the high watermark
        self._size_bytes = 0
        self._producers = ProducerTable()
        self._queue: deque[_Pending] = deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._linger_full = asyncio.Event()
        self._hw_moved = asyncio.Event()
        self._state = "new"  # -> running -> stopping -> stopped
        self._stopped = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._failure: BaseException | None = None
        self._inflight: list[_Pending] = []
        self._dirty = False
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._unsynced_dirs: list[Path] = []  # hold new entries (a segment file) not yet fsynced

    def __repr__(self) -> str:
        return f"PartitionLog({self.topic}/{self.partition}, {self.directory})"

    async def __aenter__(self) -> PartitionLog:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- state -------------------------------------------------------------------

    @property
    def config(self) -> LogConfig:
        return self._config

    @property
    def high_watermark(self) -> int:
        """One past the last offset a reader may see."""
        return self._hw

    @property
    def log_start_offset(self) -> int:
        """The first offset still stored."""
        return self._log_start

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    @property
    def segment_count(self) -> int:
        return len(self._view.segments)

    @property
    def queued_bytes(self) -> int:
        """Bytes of appends waiting for the writer."""
        return self._queued_bytes

    @property
    def producer_count(self) -> int:
        return len(self._producers)

    @property
    def _active(self) -> Segment:
        return self._view.segments[-1]

    def update_config(self, config: LogConfig) -> None:
        """Apply a new configuration; it takes effect from the next write group."""
        self._config = config
        if self._view.segments:
            self._active.index_interval_bytes = config.index_interval_bytes

    # -- start and stop ------------------------------------------------------------

    async def start(self) -> None:
        """Open the segments, recover the active one, and start the writer. Idempotent."""
        if self._state not in ("new", "loaded"):
            return
        if self._state == "new":
            self._state = "starting"
            try:
                await asyncio.to_thread(self.load)
            except BaseException:
                self._state = "new"
                raise
        self._state = "running"
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(), name=f"shoal-writer-{self.topic}-{self.partition}"
        )

    def load(self) -> None:
        """Find the segments on disk and open (or recover) the active one.

        Blocking: ``start()`` runs it in a thread, or a caller opening many logs runs it
        for a batch of them in one thread and then awaits ``start()``.
        """
        self._load_files()
        if self._state == "new":
            self._state = "loaded"

    def _load_files(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        sizes: dict[int, int] = {}
        others = []
        for entry in os.scandir(d):
            stem, _, ext = entry.name.partition(".")
            if ext.endswith(("deleted", "tmp")):
                os.unlink(entry.path)  # left by a crash in the middle of a delete or a rewrite
            elif ext == "log" and len(stem) == 20 and stem.isdigit():
                sizes[int(stem)] = entry.stat().st_size
            elif ext in ("index", "timeindex") and len(stem) == 20 and stem.isdigit():
                others.append((int(stem), entry.path))
        for base, path in others:
            if base not in sizes:
                os.unlink(path)
        clean = self._read_clean_shutdown()
        interval = self._config.index_interval_bytes
        bases = sorted(sizes)
        segments = [Segment(d, b, size=sizes[b], index_interval_bytes=interval) for b in bases]
        if not segments:
            active = Segment(d, 0, index_interval_bytes=interval)
            active.create()
            segments.append(active)
            self._unsynced_dirs = [d, d.parent]
        else:
            active = segments[-1]
            if not (
                clean is not None
                and clean.get("base_offset") == active.base_offset
                and active.resume(
                    size=clean["size"],
                    next_offset=clean["next_offset"],
                    max_timestamp=clean["max_timestamp"],
                    max_ts_offset=clean["max_ts_offset"],
                )
            ):
                frames = active.recover()
                self._producers.rebuild(h for _, h in frames)
            else:
                self._producers = ProducerTable.from_dict(clean["producers"])
        self._view = _View(tuple(s.base_offset for s in segments), tuple(segments))
        self._log_start = segments[0].base_offset
        self._hw = active.next_offset
        self._readable_end = active.size
        self._size_bytes = sum(s.size for s in segments)
        log.debug(
            "opened %s/%d: %d segments, offsets [%d, %d), %d bytes",
            self.topic,
            self.partition,
            len(segments),
            self._log_start,
            self._hw,
            self._size_bytes,
        )

    def _read_clean_shutdown(self) -> dict | None:
        """The state a clean stop recorded, removed at once so a later crash cannot trust it."""
        path = self.directory / CLEAN_SHUTDOWN
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        path.unlink()
        try:
            state = msgpack.unpackb(raw, strict_map_key=False)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            return None
        return state if isinstance(state, dict) else None

    def _write_clean_shutdown(self) -> None:
        active = self._active
        state = {
            "base_offset": active.base_offset,
            "size": active.size,
            "next_offset": active.next_offset,
            "max_timestamp": active.max_timestamp if active.max_timestamp is not None else -(2**63),
            "max_ts_offset": active.max_ts_offset,
            "producers": self._producers.to_dict(),
        }
        path = self.directory / CLEAN_SHUTDOWN
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(msgpack.packb(state))
        os.replace(tmp, path)

    async def stop(self) -> None:
        """Write what is queued, fsync, and close the files. Idempotent.

        Appends queued before ``stop`` are written; later ones are refused.
        """
        if self._state in ("stopping", "stopped"):
            await self._stopped.wait()
            return
        if self._state in ("new", "starting", "loaded"):
            if self._view.segments:
                self._active.close()
            self._state = "stopped"
            self._stopped.set()
            return
        self._state = "stopping"
        self._wakeup.set()
        self._linger_full.set()
        try:
            if self._writer is not None:
                await asyncio.shield(self._writer)
            if self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            while self._background:
                await asyncio.gather(*self._background, return_exceptions=True)
            self._active.persist_indexes(force=True)
            if self._dirty or self._unsynced_dirs:
                await self._fsync_active()
            if self._failure is None:
                self._write_clean_shutdown()
        finally:
            for seg in self._view.segments[:-1]:
                self._open_segments.discard(seg)
            self._active.close()
            self._state = "stopped"
            self._stopped.set()
            self._hw_moved.set()

    # -- appends -------------------------------------------------------------------

    async def append(self, body: bytes, headers: list[FrameHeader] | None = None) -> AppendResult:
        """Append the frames of one produce body, as one unit.

        Args:
            body: one or more whole frames (a produce request body).
            headers: ``validate_frames(body)``, when the caller has already checked it.

        Returns:
            The offsets of the first and last record of the body. For retried
            batches of an idempotent producer, their original offsets with
            ``duplicate=True``.

        Raises:
            Throttled: more than ``max_queue_bytes`` are waiting to be written.
            DuplicateSequence, OutOfOrderSequence: a producer sequence does not fit.
            StorageFull: the disk is full; nothing of the body was written.
            InternalError: the log is not running.
        """
        if self._state != "running":
            if self._failure is not None:
                raise InternalError(f"the writer of {self.topic}/{self.partition} failed: {self._failure!r}")
            raise InternalError(f"the log of {self.topic}/{self.partition} is not open")
        if headers is None:
            headers = validate_frames(body)
        size = len(body)
        cfg = self._config
        if self._queued_bytes and self._queued_bytes + size > cfg.max_queue_bytes:
            self.stats.throttled += 1
            raise Throttled(
                f"{self.topic}/{self.partition} has {self._queued_bytes} bytes waiting to be written",
                retry_after=1,
            )
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(body, headers, size, sum(h.record_count for h in headers), future))
        self._queued_bytes += size
        if self._queued_bytes >= cfg.linger_bytes:
            self._linger_full.set()
        self._wakeup.set()
        return await future

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._state != "running":
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._linger()
                await self._write_group()
        except asyncio.CancelledError:
            self._fail_pending(InternalError(f"the writer of {self.topic}/{self.partition} was cancelled"))
            raise
        except BaseException as exc:
            log.exception("the writer of %s/%d failed", self.topic, self.partition)
            self._failure = exc
            if self._state == "running":
                self._state = "failed"
            self._fail_pending(exc)

    def _fail_pending(self, exc: BaseException) -> None:
        for p in (*self._inflight, *self._queue):
            if not p.future.done():
                p.future.set_exception(exc)
        self._inflight = []
        self._queue.clear()
        self._queued_bytes = 0

    async def _linger(self) -> None:
        cfg = self._config
        if cfg.linger_ms <= 0 or self._queued_bytes >= cfg.linger_bytes or self._state != "running":
            return
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
            end + p.size > self._config.segment_bytes
            or end + p.size > MAX_POSITION
            or next_offset + p.records - active.base_offset > MAX_POSITION
        )

    async def _write_group(self) -> None:
        """Take queued appends, write them with one pwritev, flush, then publish."""
        cfg = self._config
        active = self._active
        layer = self._producers.stage()
        group: list[_Pending] = []
        self._inflight = group  # so a writer crash fails them too
        iov: list = []
        nbytes = 0
        next_offset = active.next_offset
        while self._queue:
            p = self._queue[0]
            if group and nbytes + p.size > cfg.linger_bytes:
                break
            if self._needs_roll(active, nbytes, next_offset, p):
                if group:
                    break
                active = self._roll()
                next_offset = active.next_offset
            self._queue.popleft()
            self._queued_bytes -= p.size
            if p.future.done():  # its caller went away before the write
                continue
            group.append(p)
            try:
                next_offset, written = self._place(p, layer, next_offset, active.size + nbytes, iov)
            except ShoalApiError as exc:
                group.pop()
                p.future.set_exception(exc)
                continue
            nbytes += written
        if not group:
            return
        if nbytes:
            position = active.size
            try:
                active.write(iov, nbytes)
                if cfg.flush == "always":
                    await self._fsync_active()
            except OSError as exc:
                if active.size != position:
                    active.truncate(position)
                err = self._write_error(exc)
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(err)
                self._inflight = []
                return
            for p in group:
                for placed in p.placed:
                    active.index_batch(*placed)
            active.persist_indexes()
            active.next_offset = next_offset
            self._size_bytes += nbytes
            self.stats.writes += 1
            self.stats.bytes_written += nbytes
        self._producers.commit(layer)
        self._inflight = []
        self._publish(next_offset, active.size)
        stats = self.stats
        for p in group:
            stats.appends += 1
            stats.batches += len(p.placed)
            stats.duplicates += len(p.headers) - len(p.placed)
            if not p.future.done():
                p.future.set_result(p.result)
        if nbytes and cfg.flush != "always":
            self._mark_dirty()

    def _place(self, p: _Pending, layer, next_offset: int, position: int, iov: list) -> tuple[int, int]:
        """Check sequences and assign offsets for one append (all or nothing).

        Adds the frames to ``iov`` (the 8 patched base-offset bytes, then a view of the
        rest of the frame: no copy of the body) and returns the next offset and the
        bytes added.
        """
        item = layer.new_child()
        view = memoryview(p.body)
        at = 0
        added: list = []
        placed: list = []
        first = last = None
        duplicates = 0
        written = 0
        for h in p.headers:
            size = h.size
            if is_idempotent(h):
                original = check_sequence(item.get(h.producer_id, ()), h.producer_id, h)
                if original is not None:
                    duplicates += 1
                    first = original.base_offset if first is None else first
                    last = original.last_offset
                    at += size
                    continue
                remember(item, h, next_offset)
            added.append(base_offset_bytes(next_offset))
            added.append(view[at + 8 : at + size])
            placed.append((next_offset, size, h.max_timestamp, position + written))
            first = next_offset if first is None else first
            last = next_offset + h.record_count - 1
            next_offset += h.record_count
            written += size
            at += size
        layer.maps[0].update(item.maps[0])
        iov.extend(added)
        p.placed = placed
        p.result = AppendResult(first, last, duplicates == len(p.headers))
        return next_offset, written

    def _write_error(self, exc: OSError) -> ShoalApiError:
        where = f"{self.topic}/{self.partition}"
        if exc.errno in _FULL_ERRNOS:
            log.warning("cannot write %s to %s: %s; nothing written", where, self._active.log_path, exc)
            return StorageFull(f"no space to write {where}: {exc.strerror}")
        log.error("cannot write %s to %s: %s; nothing written", where, self._active.log_path, exc)
        return InternalError(f"cannot write {where}: {exc.strerror}")

    def _publish(self, hw: int, readable_end: int) -> None:
        self._hw = hw
        self._readable_end = readable_end
        moved, self._hw_moved = self._hw_moved, asyncio.Event()
        moved.set()

    def _roll(self) -> Segment:
        """Seal the active segment and start a new one at the next offset."""
        old = self._active
        old.seal()
        new = Segment(self.directory, old.next_offset, index_interval_bytes=self._config.index_interval_bytes)
        new.create()
        if self._config.flush != "never":
            self._spawn(_sync_files(old.detach_fd(), [old.index_path, old.timeindex_path, self.directory]))
        self._open_segments.acquire(old)
        view = self._view
        self._view = _View((*view.bases, new.base_offset), (*view.segments, new))
        self._readable_end = 0
        self._unsynced_dirs.append(self.directory)
        forgotten = self._producers.forget_before(old.base_offset)
        self.stats.rolls += 1
        log.info(
            "rolled %s/%d to segment %s at offset %d (%d idle producers forgotten)",
            self.topic,
            self.partition,
            new.log_path.name,
            new.base_offset,
            forgotten,
        )
        return new

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)
        return task

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background fsync of %s/%d failed: %r", self.topic, self.partition, task.exception())

    # -- flushing ------------------------------------------------------------------

    def _mark_dirty(self) -> None:
        self._dirty = True
        if self._config.flush == "interval" and self._flush_timer is None and self._flush_task is None:
            delay = self._config.flush_interval_ms / 1000
            self._flush_timer = asyncio.get_running_loop().call_later(delay, self._flush_due)

    def _flush_due(self) -> None:
        self._flush_timer = None
        if self._state == "running":
            self._flush_task = self._spawn(self._interval_flush())

    async def _interval_flush(self) -> None:
        try:
            await self.flush()
        finally:
            self._flush_task = None
            if self._dirty and self._state == "running":
                self._mark_dirty()

    async def flush(self) -> None:
        """fsync everything written so far (in a thread; the writer keeps going)."""
        if self._dirty and self._active.is_open:
            await self._fsync_active()

    async def _fsync_active(self) -> None:
        """fsync the active segment, and the directories that got new entries."""
        dirs, self._unsynced_dirs = self._unsynced_dirs, []
        self._dirty = False  # a write from now on makes it dirty again
        try:
            await _sync_files(self._active.detach_fd(), dirs)
        except OSError:
            self._unsynced_dirs = dirs + self._unsynced_dirs
            self._dirty = True
            raise
        self.stats.fsyncs += 1

    # -- reads ---------------------------------------------------------------------

    def _check_offset(self, offset: int) -> None:
        if offset < self._log_start or offset > self._hw:
            raise OffsetOutOfRange(
                f"offset {offset} is outside [{self._log_start}, {self._hw}] of {self.topic}/{self.partition}",
                offset=offset,
                log_start_offset=self._log_start,
                high_watermark=self._hw,
            )

    def read(self, offset: int, max_bytes: int) -> bytes:
        """Whole stored frames, starting with the batch that holds ``offset``.

        Up to ``max_bytes``, but always at least that one batch; never anything at or
        past the high watermark, and never more than one segment. Returns b"" when
        ``offset`` is the high watermark. Blocks on ``os.pread`` on purpose (page cache).

        Raises:
            OffsetOutOfRange: ``offset`` is below the log start or past the high watermark.
        """
        self._check_offset(offset)
        if offset == self._hw:
            return b""
        view = self._view
        i = bisect_right(view.bases, offset) - 1
        seg = view.segments[i]
        if i == len(view.segments) - 1:
            end = self._readable_end
        else:
            end = seg.size
            self._open_segments.acquire(seg)
        found = seg.locate(offset, end)
        if found is None:
            raise InternalError(f"offset {offset} of {self.topic}/{self.partition} not found in {seg.log_path}")
        return seg.read_from(found, max_bytes, end)

    async def wait_for(self, offset: int, timeout_s: float) -> bool:
        """Wait until the high watermark passes ``offset`` (a long-poll), or the time-out.

        Returns True when a record at ``offset`` is readable.
        """
        if self._hw > offset or timeout_s <= 0:
            return self._hw > offset
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._hw <= offset and self._state == "running":
            moved = self._hw_moved
            try:
                async with asyncio.timeout_at(deadline):
                    await moved.wait()
            except TimeoutError:
                break
        return self._hw > offset

    def offset_for_timestamp(self, ts_ms: int) -> int | None:
        """The first offset of the first batch whose max timestamp is >= ``ts_ms``.

        None when no stored batch is that recent.
        """
        view = self._view
        last = len(view.segments) - 1
        for i, seg in enumerate(view.segments):
            newest = seg.max_timestamp
            if newest is None or newest < ts_ms:
                continue
            if i == last:
                end = self._readable_end
            else:
                end = seg.size
                self._open_segments.acquire(seg)
            found = seg.offset_for_timestamp(ts_ms, end)
            if found is not None:
                return max(found, self._log_start)
        return None

    # -- retention -------------------------------------------------------------------

    async def enforce_retention(self, now_ms: int | None = None) -> int:
        """Delete the oldest sealed segments that retention no longer keeps.

        A segment goes when its newest timestamp is older than ``retention_ms``, or
        while the log is larger than ``retention_bytes``. The active segment always
        stays. Returns how many segments were deleted.
        """
        cfg = self._config
        if cfg.retention_ms is None and cfg.retention_bytes is None:
            return 0
        view = self._view
        sealed = view.segments[:-1]
        k = 0
        if cfg.retention_ms is not None:
            cutoff = (current_ms() if now_ms is None else now_ms) - cfg.retention_ms
            while k < len(sealed) and (sealed[k].max_timestamp is None or sealed[k].max_timestamp < cutoff):
                k += 1
        if cfg.retention_bytes is not None:
            total = self._size_bytes - sum(s.size for s in sealed[:k])
            while k < len(sealed) and total > cfg.retention_bytes:
                total -= sealed[k].size
                k += 1
        if k == 0:
            return 0
        doomed = sealed[:k]
        view = self._view  # a roll may only have appended to it
        self._view = _View(view.bases[k:], view.segments[k:])
        self._log_start = self._view.bases[0]
        self._size_bytes -= sum(s.size for s in doomed)
        for seg in doomed:
            self._open_segments.discard(seg)
        await asyncio.to_thread(_delete_segments, doomed)
        log.info(
            "retention deleted %d segments of %s/%d; log start offset is now %d",
            k,
            self.topic,
            self.partition,
            self._log_start,
        )
        return k


def _delete_segments(segments) -> None:
    for seg in segments:
        seg.delete_files()


async def _sync_files(fd: int, paths: list[Path]) -> None:
    """fsync ``fd`` (then close it) and each path, in a thread."""

    def work() -> None:
        try:
            _sync(fd)
        finally:
            os.close(fd)
        for path in paths:
            try:
                pfd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:  # deleted by retention meanwhile: nothing to sync
                continue
            try:
                os.fsync(pfd)
            finally:
                os.close(pfd)

    await asyncio.to_thread(work)
