"""The log of one partition: its segments, appends through a group-committing writer, and reads.

Writes go through ``writer.GroupWriter`` (one task per partition, one ``pwritev`` per
group of appends); fsyncs and the recovery point through ``flush.Flusher``; start-up
through ``loader``; trimming through ``retention``; idempotent producers through
``producer_state``.

Reads: ``read()`` serves whole stored frames below the high watermark, byte for
byte. It binary-searches a snapshot of the segment list, so a retention delete that
swaps the list cannot break it. Reads run on the event loop (see ``segment``).

Crash safety: the high watermark only covers whole frames already written (and
fsynced under ``flush="always"``). After a kill -9 or a power cut, start-up checks
every segment above the recovery point and cuts the log at the first torn or corrupt
frame, so a reader never sees one. What a crash may lose depends on ``flush``:
nothing acknowledged under ``always``; under ``interval`` at most
``flush_interval_ms`` of appends, and only if the machine (not just the process)
goes down; under ``never``, whatever the OS had not yet written.
"""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_right
from pathlib import Path
from typing import NamedTuple

from shoal.broker.kafka import check_copied_frames
from shoal.client.errors import InternalError, OffsetOutOfRange
from shoal.client.records import FrameHeader, validate_frames
from shoal.client.records import now_ms as current_ms

from .checkpoint import write_clean_shutdown
from .config import LogConfig
from .flush import Flusher
from .leader_epochs import LeaderEpochCache
from .loader import load_log, rebuild_producers
from .producer_state import ProducerTable, delete_snapshots, snapshot_path, write_snapshot
from .retention import delete_segments, expired_count
from .segment import NO_TIMESTAMP, OpenSegments, Segment
from .writer import AppendResult, GroupWriter, LogStats

log = logging.getLogger(__name__)


class _View(NamedTuple):
    """An immutable snapshot of the segment list, swapped whole on roll and delete."""

    bases: tuple[int, ...]
    segments: tuple[Segment, ...]


class PartitionLog:
    """The append-only log of one partition, in ``directory``.

    Not thread-safe: every method runs on the event loop that called ``start()``.
    ``append`` may be awaited by any number of tasks; one internal writer task
    orders and writes their batches.

    Args:
        recovery_point: the offset below which the log was known to be fsynced (from
            the broker's checkpoint); start-up after a crash checks everything above it.
        same_boot: the machine has not restarted since then, so a crash was the
            process's alone and only the active segment's tail needs checking.

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
        recovery_point: int = 0,
        same_boot: bool = False,
    ):
        self.directory = Path(directory)
        self.topic = topic
        self.partition = partition
        self.name = f"{topic}/{partition}"
        self._config = config
        self._open_segments = open_segments if open_segments is not None else OpenSegments(capacity=4)
        self.stats = LogStats()
        self._view = _View((), ())
        self._hw = 0
        self._leo = 0  # log end offset: one past the last offset written
        self._leo_bytes = 0  # the active segment's size at the log end
        self.replicated = False  # True: the high watermark moves by advance_high_watermark(), not with each write
        self._log_start = 0
        self._readable_base = 0  # base offset of the segment holding the high watermark ...
        self._readable_end = 0  # ... and its bytes below it
        self._size_bytes = 0
        self.producers = ProducerTable()
        self.epochs = LeaderEpochCache(self.directory)
        self.leader_epoch = 0  # the epoch this replica's appends are written in (set by replication)
        self._hw_moved = asyncio.Event()
        self._end_watchers: set[asyncio.Event] = set()  # see watch_end
        self._state = "new"  # -> loaded -> running -> stopping -> stopped
        self._stopped = asyncio.Event()
        self._writer = GroupWriter(self)
        self._loaded_recovery_point = recovery_point
        self._same_boot = same_boot
        self.flusher = Flusher(self.name, lambda: self.active_segment, recovery_point, [], self.stats)

    def __repr__(self) -> str:
        return f"PartitionLog({self.name}, {self.directory})"

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
    def log_end_offset(self) -> int:
        """One past the last offset written (the high watermark, unless replicated)."""
        return self._leo

    @property
    def log_start_offset(self) -> int:
        """The first offset still stored."""
        return self._log_start

    @property
    def recovery_point(self) -> int:
        """Every offset below it is on disk (fsynced)."""
        return self.flusher.recovery_point

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    @property
    def segment_count(self) -> int:
        return len(self._view.segments)

    @property
    def queued_bytes(self) -> int:
        """Bytes of appends waiting for the writer."""
        return self._writer.queued_bytes

    @property
    def producer_count(self) -> int:
        return len(self.producers)

    @property
    def error(self) -> str | None:
        """Why this log cannot take writes right now (its last write failed), or None."""
        return self._writer.error

    @property
    def active_segment(self) -> Segment:
        return self._view.segments[-1]

    def update_config(self, config: LogConfig) -> None:
        """Apply a new configuration; it takes effect from the next write group."""
        self._config = config
        self.flusher.configure(config.flush, config.flush_interval_ms)
        if self._view.segments:
            self.active_segment.index_interval_bytes = config.index_interval_bytes

    # -- start and stop ------------------------------------------------------------

    async def start(self) -> None:
        """Open the segments, recover what needs it, and start the writer. Idempotent."""
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
        self._writer.start()
        if self.flusher.recovery_point < self._leo:  # recovery checked data not known to be on disk
            self.flusher.written()

    def load(self) -> None:
        """Find the segments on disk and open (or recover) them (``loader.load_log``).

        Blocking: ``start()`` runs it in a thread, or a caller opening many logs runs it
        for a batch of them in one thread and then awaits ``start()``.
        """
        loaded = load_log(
            self.directory, self._config, self._loaded_recovery_point, current_ms(), same_boot=self._same_boot
        )
        segments = loaded.segments
        self.producers = loaded.producers
        self.epochs = loaded.epochs
        self.flusher = Flusher(
            self.name, lambda: self.active_segment, loaded.recovery_point, loaded.unsynced, self.stats
        )
        self.flusher.configure(self._config.flush, self._config.flush_interval_ms)
        self._set_view(segments)
        log.debug(
            "opened %s: %d segments, offsets [%d, %d), %d bytes",
            self.name,
            len(segments),
            self._log_start,
            self._hw,
            self._size_bytes,
        )
        if self._state == "new":
            self._state = "loaded"

    def _set_view(self, segments) -> None:
        active = segments[-1]
        self._view = _View(tuple(s.base_offset for s in segments), tuple(segments))
        self._log_start = segments[0].base_offset
        self._hw = self._leo = active.next_offset
        self._readable_base = active.base_offset
        self._readable_end = self._leo_bytes = active.size
        self._size_bytes = sum(s.size for s in segments)

    async def stop(self) -> None:
        """Write what is queued, fsync everything, and close the files. Idempotent.

        Appends queued before ``stop`` are written; later ones are refused.
        """
        if self._state in ("stopping", "stopped"):
            await self._stopped.wait()
            return
        if self._state in ("new", "starting", "loaded"):
            if self._view.segments:
                self.active_segment.close()
            self._state = "stopped"
            self._stopped.set()
            return
        self._state = "stopping"
        try:
            await self._writer.stop()
            await self.flusher.stop()
            self.active_segment.persist_indexes(force=True)
            if self.flusher.pending or self.flusher.recovery_point < self._leo:
                await self.flusher.sync(self._leo)
            if self._writer.failure is None:
                self._write_clean_shutdown()
        finally:
            for seg in self._view.segments[:-1]:
                self._open_segments.discard(seg)
            self.active_segment.close()
            self._state = "stopped"
            self._stopped.set()
            self._end_moved()

    def _write_clean_shutdown(self) -> None:
        active = self.active_segment
        state = {
            "base_offset": active.base_offset,
            "size": active.size,
            "next_offset": active.next_offset,
            "max_timestamp": active.max_timestamp if active.max_timestamp is not None else NO_TIMESTAMP,
            "max_ts_offset": active.max_ts_offset,
            "producers": self.producers.to_list(),
        }
        write_clean_shutdown(self.directory, state)

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
            StorageFull: the disk is full (or a new segment could not be opened);
                nothing of the body was written.
            InternalError: the log is not running.
        """
        if self._state != "running" or not self._writer.running:
            if self._writer.failure is not None:
                raise InternalError(f"the writer of {self.name} failed: {self._writer.failure!r}")
            raise InternalError(f"the log of {self.name} is not open")
        if headers is None:
            headers = validate_frames(body)
        return await self._writer.submit(body, headers)

    async def append_replicated(self, body: bytes) -> AppendResult:
        """Store frames fetched from the partition's leader as they are (a follower's append).

        Each frame is checked (CRC, magic) and must continue the log; base offsets and
        leader epochs are kept, and new epochs go to the leader-epoch cache first.

        Raises:
            CorruptBatch: a frame fails its checks.
            InternalError: the frames do not continue the log, or the log is not running.
        """
        if self._state != "running" or not self._writer.running:
            raise InternalError(f"the log of {self.name} is not open")
        return await self._writer.submit(body, check_copied_frames(body), replicated=True)

    def publish(self, leo: int, leo_bytes: int, nbytes: int) -> None:
        """Move the log end (and the high watermark, unless replicated) after a write of
        ``nbytes`` (the writer calls it)."""
        self._leo = leo
        self._leo_bytes = leo_bytes
        self._size_bytes += nbytes
        if not self.replicated:
            self._hw = leo
            self._readable_base = self.active_segment.base_offset
            self._readable_end = leo_bytes
        self._end_moved()

    def _wake(self) -> None:
        moved, self._hw_moved = self._hw_moved, asyncio.Event()
        moved.set()

    def _end_moved(self) -> None:
        """The log end moved, or the log stopped: wake the long-polls and the end watchers."""
        self._wake()
        for event in self._end_watchers:
            event.set()

    def start_replicated(self, checkpointed_hw: int | None) -> None:
        """Make this a replica's log: from now on the high watermark moves only by
        ``advance_high_watermark``. It restarts at the checkpointed one (Kafka's
        replication-offset-checkpoint; the log start when none was kept), never at the
        log end: a restarted leader may hold records no follower has."""
        if self.replicated:
            return
        self.replicated = True
        self._place_high_watermark(max(self._log_start, min(checkpointed_hw or 0, self._leo)))

    def advance_high_watermark(self, hw: int) -> bool:
        """Move the high watermark of a replicated log up to ``hw`` (at most the log end,
        at a frame boundary: a replica's log end). Returns True if it moved."""
        hw = min(hw, self._leo)
        if hw <= self._hw:
            return False
        self._place_high_watermark(hw)
        return True

    def _place_high_watermark(self, hw: int) -> None:
        view = self._view
        seg = view.segments[bisect_right(view.bases, hw) - 1]
        if hw == self._leo and seg is view.segments[-1]:
            pos = self._leo_bytes
        else:
            end = self._leo_bytes if seg is view.segments[-1] else seg.size
            found = seg.locate(hw, end) if hw > seg.base_offset else None
            pos = found.position if found is not None else (0 if hw == seg.base_offset else None)
            if pos is None:
                raise InternalError(f"high watermark {hw} of {self.name} is not at a batch boundary")
        self._hw = hw
        self._readable_base = seg.base_offset
        self._readable_end = pos
        self._wake()

    def roll(self) -> Segment:
        """Seal the active segment and start a new one at the next offset (the writer calls it).

        The producer table is snapshotted for the new segment's base offset first.
        Raises OSError (with nothing changed but the sealed indexes) when the new
        segment cannot be created.
        """
        old = self.active_segment
        old.seal()
        new = Segment(self.directory, old.next_offset, index_interval_bytes=self._config.index_interval_bytes)
        new.create()
        # under flush: always the sealed .log is fsynced already; the indexes are derived data
        sealed = [] if self._config.flush == "always" else [old.log_path, old.index_path, old.timeindex_path]
        expired = self.producers.expire(current_ms(), self._config.producer_expiry_ms)
        try:
            sealed.append(write_snapshot(self.directory, new.base_offset, self.producers))
        except OSError as exc:  # start-up then replays from an older snapshot
            log.warning("could not write the producer snapshot of %s at %d: %s", self.name, new.base_offset, exc)
            snapshot_path(self.directory, new.base_offset).unlink(missing_ok=True)
        self._open_segments.acquire(old)  # stays open for the reads that follow it
        view = self._view
        self._view = _View((*view.bases, new.base_offset), (*view.segments, new))
        self._leo_bytes = 0
        if self._hw == new.base_offset:  # else it stays inside a sealed segment (replicated, behind)
            self._readable_base = new.base_offset
            self._readable_end = 0
        self.flusher.rolled(sealed, self.directory)
        self.stats.rolls += 1
        log.info(
            "rolled %s to segment %s at offset %d (%d producers expired)",
            self.name,
            new.log_path.name,
            new.base_offset,
            expired,
        )
        return new

    def expire_producers(self, now_ms: int | None = None) -> int:
        """Forget producers idle for ``producer_expiry_ms``; return how many."""
        return self.producers.expire(current_ms() if now_ms is None else now_ms, self._config.producer_expiry_ms)

    async def flush(self) -> None:
        """fsync everything written so far (in a thread; the writer keeps going)."""
        if self.flusher.pending and self.active_segment.is_open:
            await self.flusher.sync(self.active_segment.next_offset)

    # -- reads ---------------------------------------------------------------------

    def _check_offset(self, offset: int) -> None:
        if offset < self._log_start or offset > self._hw:
            raise OffsetOutOfRange(
                f"offset {offset} is outside [{self._log_start}, {self._hw}] of {self.name}",
                offset=offset,
                log_start_offset=self._log_start,
                high_watermark=self._hw,
            )

    def read(self, offset: int, max_bytes: int, *, to_log_end: bool = False) -> bytes:
        """Whole stored frames, starting with the batch that holds ``offset``.

        Up to ``max_bytes``, but always at least that one batch; never anything at or
        past the high watermark (``to_log_end``: the log end, for a follower's fetch),
        and never more than one segment. Returns b"" when ``offset`` is that end.
        Blocks on ``os.pread`` on purpose (page cache).

        Raises:
            OffsetOutOfRange: ``offset`` is below the log start or past that end.
        """
        limit = self._leo if to_log_end else self._hw
        if offset < self._log_start or offset > limit:
            self._check_offset(offset)
        if offset == limit:
            return b""
        view = self._view
        i = bisect_right(view.bases, offset) - 1
        seg = view.segments[i]
        last = i == len(view.segments) - 1
        if not to_log_end and self._readable_base == seg.base_offset:
            end = self._readable_end  # the segment holding the high watermark
        else:
            end = self._leo_bytes if last else seg.size
        if not last:
            self._open_segments.acquire(seg)
        found = seg.locate(offset, end)
        if found is None:
            raise InternalError(f"offset {offset} of {self.name} not found in {seg.log_path}")
        return seg.read_from(found, max_bytes, end)

    def watch_end(self, event: asyncio.Event) -> None:
        """Set ``event`` at the next write (or when the log stops) until ``unwatch_end``:
        a follower's long-poll over thousands of partitions waits on one event, not on a
        task per partition."""
        self._end_watchers.add(event)

    def unwatch_end(self, event: asyncio.Event) -> None:
        self._end_watchers.discard(event)

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

    # -- retention and truncation ------------------------------------------------------

    async def enforce_retention(self, now_ms: int | None = None) -> int:
        """Delete the oldest sealed segments that retention no longer keeps (``retention``).

        Returns how many segments were deleted.
        """
        cfg = self._config
        if cfg.retention_ms is None and cfg.retention_bytes is None:
            return 0
        now = current_ms() if now_ms is None else now_ms
        return await self._delete_oldest(expired_count(self._view.segments[:-1], self._size_bytes, cfg, now), "retention")

    async def delete_segments_before(self, offset: int) -> int:
        """Delete the sealed segments that lie wholly below ``offset`` (the offsets topic's
        snapshots: what comes before the latest is not needed). Returns how many."""
        bases = self._view.bases
        return await self._delete_oldest(max(0, bisect_right(bases, min(offset, self._hw)) - 1), "a snapshot")

    async def _delete_oldest(self, k: int, why: str) -> int:
        if k == 0:
            return 0
        view = self._view  # a roll may only have appended to it
        doomed = view.segments[:k]
        self._view = _View(view.bases[k:], view.segments[k:])
        self._log_start = self._view.bases[0]
        self._size_bytes -= sum(s.size for s in doomed)
        for seg in doomed:
            self._open_segments.discard(seg)
        await asyncio.to_thread(delete_segments, doomed, self._log_start)
        log.info("%s deleted %d segments of %s; log start offset is now %d", why, k, self.name, self._log_start)
        return k

    async def truncate_to(self, offset: int) -> int:
        """Remove every record at or above ``offset``; return the new high watermark.

        A batch holding ``offset`` goes whole (the log ends at its base offset). Later
        segments are deleted, the producer table is rebuilt for the new end. Waits for
        the write under way; appends queued behind it land after the new end. Nothing
        happens when ``offset`` is at or past the high watermark.

        Raises:
            OffsetOutOfRange: ``offset`` is below the log start offset.
        """
        if offset >= self._leo:
            return self._leo
        if offset < self._log_start:
            self._check_offset(offset)
        async with self._writer.exclusive(), self.flusher.exclusive():  # no write, no sync under way
            view = self._view
            i = bisect_right(view.bases, offset) - 1
            keep = view.segments[i]
            for seg in view.segments[i:]:
                self._open_segments.discard(seg)
            for seg in view.segments[i + 1 :]:
                seg.delete_files()
            if not keep.is_open:
                keep.recover(check_from=keep.base_offset + (1 << 62))  # reopen it read-write (headers only)
            end = keep.truncate_to_offset(offset)
            segments = view.segments[: i + 1]
            hw = self._hw
            self._set_view(segments)
            if self.replicated and hw < end:  # a follower's cut: what it had not seen committed stays unreadable
                self._place_high_watermark(hw)
            delete_snapshots(self.directory, above=end)
            self.producers = rebuild_producers(list(segments), current_ms())
            self.epochs.truncate_from(end)
            self.flusher.truncated(end, self.directory)
        log.warning("truncated %s to offset %d", self.name, end)
        return end

    async def truncate_fully_and_start_at(self, offset: int) -> None:
        """Delete every segment and start empty at ``offset`` (a follower below its leader's
        log start, which retention moved past it: Kafka's truncateFullyAndStartAt)."""
        async with self._writer.exclusive(), self.flusher.exclusive():
            for seg in self._view.segments:
                self._open_segments.discard(seg)
                seg.delete_files()
            delete_snapshots(self.directory, above=-1)
            fresh = Segment(self.directory, offset, index_interval_bytes=self._config.index_interval_bytes)
            fresh.create()
            self._set_view([fresh])
            self.producers = ProducerTable()
            self.epochs.truncate_from(0)
            self.flusher.truncated(offset, self.directory)
        log.warning("emptied %s: it starts again at offset %d", self.name, offset)
