"""Committed offsets of consumer groups, for the partitions this broker owns (static
clusters; a replicated cluster keeps them in ``__consumer_offsets``, see
``broker/replication/group_offsets.py``).

Two files in the store's directory, each a sequence of records framed as::

    offset  size  field
    0       4     length   u32  bytes of the payload
    4       4     crc      u32  CRC32C of the payload
    8       ...   payload  msgpack

``offsets.log``: one record per ``commit`` or ``delete`` call, appended and fsynced
before the call returns (calls that arrive together share one write and one fsync).
A commit's payload is ``["c", group, [[topic, partition, offset, metadata], ...]]``,
a delete's ``["d", group, [[topic, partition], ...] | None]`` (None: the whole group).

``offsets.snapshot``: one record, ``{group: [[topic, partition, offset, metadata], ...]}``,
the whole state when the log was last compacted.

Start-up loads the snapshot and replays the log over it; a torn or corrupt tail
record (a kill -9 in the middle of a write) is cut, so a call is applied entirely or
not at all, and an acknowledged call is never lost. Compaction writes the snapshot
to a temporary file, fsyncs it, renames it over the old one, then empties the log;
replaying an old log over the new snapshot gives the same state, so a crash at any
step is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from shoal.client.errors import InternalError, StorageFull
from shoal.client.structs import OffsetAndMetadata, TopicPartition

from .durable import frame, fsync_dir, is_disk_full, read_record, sync_data, unframe, write_record

log = logging.getLogger(__name__)

LOG_FILE = "offsets.log"
SNAPSHOT_FILE = "offsets.snapshot"


def _write_error(exc: OSError) -> Exception:
    if is_disk_full(exc):
        return StorageFull(f"no space to write committed offsets: {exc.strerror}")
    return InternalError(f"cannot write committed offsets: {exc.strerror}")


GroupOffsets = dict[str, dict[TopicPartition, OffsetAndMetadata]]


def apply_commit(groups: GroupOffsets, group: str, entries: Iterable) -> None:
    """Record ``[[topic, partition, offset, metadata], ...]`` as ``group``'s committed offsets
    (this store's log and the replicated ``__consumer_offsets`` replay the same way)."""
    offsets = groups.setdefault(group, {})
    for topic, partition, offset, metadata in entries:
        offsets[TopicPartition(topic, partition)] = OffsetAndMetadata(offset, metadata)


def apply_delete(groups: GroupOffsets, group: str, parts: Iterable | None) -> None:
    """Forget ``group``'s offsets of ``[[topic, partition], ...]`` (None: all of them); a group
    left without offsets goes."""
    if parts is None:
        groups.pop(group, None)
        return
    offsets = groups.get(group, {})
    for topic, partition in parts:
        offsets.pop(TopicPartition(topic, partition), None)
    if not offsets:
        groups.pop(group, None)


@dataclass(eq=False)
class _Pending:
    record: list
    future: asyncio.Future
    frame: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.frame = frame(msgpack.packb(self.record))


class OffsetStore:
    """Durable, crash-atomic committed offsets: (group, topic, partition) -> OffsetAndMetadata.

    Reads are served from memory; ``commit`` and ``delete`` return once their record
    is fsynced, and only then are visible to ``get``. Not thread-safe: use it from
    the event loop that started it.

    Example::

        store = OffsetStore(Path("data/__offsets"))
        await store.start()
        await store.commit("billing", [("orders", 0, 42, "")])
        store.get("billing", "orders", 0)  # OffsetAndMetadata(offset=42, metadata='')
    """

    def __init__(self, directory: Path, *, compact_bytes: int = 4 * 1024 * 1024):
        self.directory = Path(directory)
        self.compact_bytes = compact_bytes
        self._groups: dict[str, dict[TopicPartition, OffsetAndMetadata]] = {}
        self._fd: int | None = None
        self._size = 0
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._running = False
        self.compactions = 0

    async def __aenter__(self) -> OffsetStore:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- start and stop ------------------------------------------------------------

    async def start(self) -> None:
        """Load the snapshot, replay the log (cutting a torn tail). Idempotent."""
        if self._fd is not None:
            return
        await asyncio.to_thread(self._load)
        self._running = True
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="shoal-offsets-writer")

    def _load(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.joinpath(SNAPSHOT_FILE + ".tmp").unlink(missing_ok=True)
        snap = self.directory / SNAPSHOT_FILE
        if snap.exists():
            try:
                state = read_record(snap)
            except ValueError:
                state = None
            if not isinstance(state, dict):
                raise RuntimeError(f"committed offsets snapshot {snap} is corrupt; move it away to start empty")
            for group, entries in state.items():
                self._apply(["c", group, entries])
        path = self.directory / LOG_FILE
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if created:  # the first commit's fsync covers the file, not its name in the directory
            fsync_dir(self.directory)
            fsync_dir(self.directory.parent)
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
        records, end = unframe(data)
        for record in records:
            self._apply(record)
        if end < len(data):
            log.warning("cut %d bytes of torn or corrupt commit records from %s at byte %d", len(data) - end, path, end)
            os.ftruncate(fd, end)
        self._fd = fd
        self._size = end

    async def stop(self) -> None:
        """Write what is queued and close the files. Idempotent."""
        if not self._running:
            return
        self._running = False
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reads ---------------------------------------------------------------------

    def get(self, group: str, topic: str, partition: int) -> OffsetAndMetadata | None:
        """The committed offset, or None when the group never committed one here."""
        return self._groups.get(group, {}).get(TopicPartition(topic, partition))

    def groups(self) -> list[str]:
        return sorted(self._groups)

    def group_offsets(self, group: str) -> dict[TopicPartition, OffsetAndMetadata]:
        return dict(self._groups.get(group, {}))

    # -- writes --------------------------------------------------------------------

    async def commit(self, group: str, offsets: Iterable[tuple[str, int, int, str]]) -> None:
        """Commit ``(topic, partition, offset, metadata)`` entries: all of them or none.

        Raises:
            StorageFull: the disk is full; nothing was committed.
        """
        entries = [[t, int(p), int(o), m or ""] for t, p, o, m in offsets]
        await self._submit(["c", group, entries])

    async def delete(self, group: str, partitions: Iterable[TopicPartition | tuple[str, int]] | None = None) -> None:
        """Forget a group's offsets for ``partitions``, or the whole group when None."""
        parts = None if partitions is None else [[t, int(p)] for t, p in partitions]
        await self._submit(["d", group, parts])

    async def _submit(self, record: list) -> None:
        if not self._running:
            raise InternalError("the committed offsets store is not open")
        pending = _Pending(record, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        self._wakeup.set()
        await pending.future

    def _apply(self, record: list) -> None:
        kind, group, entries = record
        if kind == "c":
            apply_commit(self._groups, group, entries)
        else:
            apply_delete(self._groups, group, entries)

    async def _write_loop(self) -> None:
        while True:
            if not self._queue:
                if not self._running:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            group, self._queue = self._queue, []
            try:
                await self._write(group)
            except Exception as exc:  # resolve every waiter, keep serving
                err: Exception = exc
                if isinstance(exc, OSError):
                    log.warning("could not write %d offset commits to %s: %s", len(group), self.directory, exc)
                    err = _write_error(exc)
                else:
                    log.exception("could not write %d offset commits to %s", len(group), self.directory)
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            for p in group:
                self._apply(p.record)
                if not p.future.done():
                    p.future.set_result(None)
            if self._size > self.compact_bytes:
                try:
                    await asyncio.to_thread(self._compact)
                except OSError as exc:
                    log.warning("could not compact committed offsets in %s: %s", self.directory, exc)

    async def _write(self, group: list[_Pending]) -> None:
        data = b"".join(p.frame for p in group)
        start = self._size
        fd = self._fd
        assert fd is not None

        def work() -> None:
            try:
                view = memoryview(data)
                pos = start
                while view:
                    n = os.pwrite(fd, view, pos)
                    view = view[n:]
                    pos += n
                sync_data(fd)
            except OSError:
                os.ftruncate(fd, start)
                raise

        await asyncio.to_thread(work)
        self._size = start + len(data)

    def _compact(self) -> None:
        """Snapshot the state, then empty the log (runs in a thread between writes)."""
        state = {
            group: [[tp.topic, tp.partition, om.offset, om.metadata] for tp, om in offsets.items()]
            for group, offsets in self._groups.items()
        }
        write_record(self.directory / SNAPSHOT_FILE, state)
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        sync_data(self._fd)
        self._size = 0
        self.compactions += 1
        log.debug("compacted committed offsets in %s: %d groups", self.directory, len(state))
