"""One log segment: a ``.log`` file of frames and its two sparse indexes.

A partition directory holds segments named by the 20-digit base offset of their
first batch (``00000000000000000000.log``). Each segment has three files:

``<base>.log``: the frames, back to back, exactly as ``client.records`` lays them out
(base offset patched by the broker). Nothing else: no file header, no padding.

``<base>.index``: the sparse offset index, a sequence of 8-byte entries::

    offset  size  field
    0       4     relative_offset  u32  base offset of a batch minus the segment's base
    4       4     position         u32  byte position of that batch in the .log

An entry is added for the first batch that starts ``index_interval_bytes`` or more
after the previous entry's batch (the segment's first batch needs none: position 0).
Entries strictly increase in both fields.

``<base>.timeindex``: the sparse time index, a sequence of 12-byte entries::

    offset  size  field
    0       8     timestamp        i64  greatest batch max_timestamp so far in the segment
    8       4     relative_offset  u32  the batch that carries that timestamp

Whenever an offset-index entry is added, and once more when the segment is sealed,
a time entry is appended if the greatest max_timestamp seen so far exceeds the last
entry's. So every batch at or before an entry's batch has max_timestamp <= its
timestamp, the last entry of a sealed segment holds its newest timestamp, and a
lookup for ``ts`` may start at the batch of the greatest entry below ``ts``.

All integers are big-endian. Both index files are derived data: never checksummed,
rebuilt from the frame headers whenever they are missing or do not fit the log.

Blocking on purpose: appends (``os.pwritev``) and reads (``os.pread``) run on the
event loop. They hit the page cache and are bounded by the write group and the
fetch's ``max_bytes``; only fsync, which waits for the device, goes to a thread (in
``flush``). Nothing here is safe across threads.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import struct
from array import array
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from crc32c import crc32c

from shoal.client.records import (
    CRC_START,
    HEADER_SIZE,
    LENGTH_END,
    MAX_HEADER_SIZE,
    STORED_MAGICS,
    FrameHeader,
    try_read_header,
)

log = logging.getLogger(__name__)

INDEX_ENTRY = struct.Struct(">II")
TIME_ENTRY = struct.Struct(">qI")
MAX_POSITION = 0xFFFF_FFFF  # positions and relative offsets are u32
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_SCAN_BLOCK = 16 * 1024  # headers are read in blocks this size while scanning
_PERSIST_EVERY = 64  # index entries buffered in memory before they are appended to the files
_LENGTH = struct.Struct(">I")
NO_TIMESTAMP = -(2**63)


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


class Located(NamedTuple):
    """A frame found by a scan: its position in the .log and its header."""

    position: int
    header: FrameHeader


class Segment:
    """The files of one segment, and their indexes in memory while open.

    A segment is either *active* (the one the partition appends to, always open,
    opened read-write) or *sealed* (read-only, opened on demand by ``OpenSegments``
    and closed again when evicted). Only the owning ``PartitionLog`` appends.

    ``size`` is the byte length of the whole frames in the ``.log``. For the active
    segment ``next_offset`` and ``max_timestamp`` are tracked in memory; for a sealed
    one they are read from the files when first asked for.
    """

    def __init__(self, directory: Path, base_offset: int, *, size: int = 0, index_interval_bytes: int = 4096):
        self.directory = directory
        self.base_offset = base_offset
        name = segment_name(base_offset)
        self.log_path = directory / f"{name}.log"
        self.index_path = directory / f"{name}.index"
        self.timeindex_path = directory / f"{name}.timeindex"
        self.size = size
        self.index_interval_bytes = index_interval_bytes
        self.fd: int | None = None
        self.next_offset: int | None = None
        self._max_timestamp: int | None = None
        self._max_ts_offset = base_offset
        self._reset_index()

    def __repr__(self) -> str:
        return f"Segment({self.log_path}, size={self.size})"

    def _reset_index(self) -> None:
        self._rel_offsets = array("I")
        self._positions = array("I")
        self._times = array("q")
        self._time_offsets = array("I")
        self._persisted_index = 0
        self._persisted_times = 0
        self._since_index = 0

    # -- opening -----------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.fd is not None

    def create(self) -> None:
        """Create and open the .log of a new active segment (index files come with their
        first entries, or when it is sealed)."""
        self.fd = os.open(self.log_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        self.size = 0
        self.next_offset = self.base_offset
        self._max_timestamp = NO_TIMESTAMP

    def open_sealed(self) -> None:
        """Open a sealed segment for reading, loading (or rebuilding) its indexes."""
        fd = os.open(self.log_path, os.O_RDONLY)
        try:
            self.size = os.fstat(fd).st_size
            self.fd = fd
            if not self._load_indexes(sealed=True):
                self._rebuild_indexes()
        except BaseException:
            self.fd = None
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self._reset_index()

    def detach_fd(self) -> int:
        """A duplicate of the open fd, for an fsync in a thread that may outlive this object's fd."""
        assert self.fd is not None
        return os.dup(self.fd)

    # -- indexes -----------------------------------------------------------------

    def _load_indexes(self, *, sealed: bool) -> bool:
        """Load both index files; False when they do not fit the log.

        The active segment creates them with its first entries, so for it a missing
        file is an empty one; a sealed segment without them needs a rebuild.
        """
        try:
            raw = self.index_path.read_bytes()
            traw = self.timeindex_path.read_bytes()
        except FileNotFoundError:
            if sealed:
                return False
            raw = self.index_path.read_bytes() if self.index_path.exists() else b""
            traw = self.timeindex_path.read_bytes() if self.timeindex_path.exists() else b""
        if len(raw) % INDEX_ENTRY.size or len(traw) % TIME_ENTRY.size:
            return False
        entries = list(INDEX_ENTRY.iter_unpack(raw))
        times = list(TIME_ENTRY.iter_unpack(traw))
        if any(a[0] >= b[0] or a[1] >= b[1] for a, b in zip(entries, entries[1:])):
            return False
        if any(a[0] >= b[0] or a[1] > b[1] for a, b in zip(times, times[1:])):
            return False
        if entries and not self._entry_fits(*entries[-1]):
            return False
        if sealed and self.size and not times:
            return False  # a sealed segment's time index ends with its newest timestamp
        self._rel_offsets = array("I", (r for r, _ in entries))
        self._positions = array("I", (p for _, p in entries))
        self._times = array("q", (t for t, _ in times))
        self._time_offsets = array("I", (o for _, o in times))
        self._persisted_index = len(entries)
        self._persisted_times = len(times)
        self._since_index = self.size - (entries[-1][1] if entries else 0)
        if sealed:
            self._max_timestamp = times[-1][0] if times else NO_TIMESTAMP
        return True

    def _last_valid_entry_offset(self) -> int:
        """Base offset of the last .index entry's frame if that frame is whole and valid, else the segment's."""
        try:
            raw = self.index_path.read_bytes()
        except FileNotFoundError:
            return self.base_offset
        entries = list(INDEX_ENTRY.iter_unpack(raw[: len(raw) - len(raw) % INDEX_ENTRY.size]))
        for i in range(1, len(entries)):  # only the ordered prefix can be trusted
            if entries[i - 1][0] >= entries[i][0] or entries[i - 1][1] >= entries[i][1]:
                entries = entries[:i]
                break
        for rel, pos in reversed(entries):
            if self._entry_fits(rel, pos) and self._crc_ok(pos, try_read_header(self.read(pos, MAX_HEADER_SIZE))):
                return self.base_offset + rel
        return self.base_offset

    def _entry_fits(self, rel: int, pos: int) -> bool:
        """Does an index entry point at a whole frame with the base offset it claims?"""
        if pos + HEADER_SIZE > self.size:
            return False
        h = try_read_header(self.read(pos, MAX_HEADER_SIZE))
        return h is not None and h.base_offset == self.base_offset + rel and pos + h.size <= self.size

    def _rebuild_indexes(self) -> None:
        log.warning("rebuilding the indexes of %s (missing or not matching the log)", self.log_path)
        self._reset_index()
        self._max_timestamp = NO_TIMESTAMP
        for pos, h in self.scan(0, self.size):
            self.index_batch(h.base_offset, h.size, h.max_timestamp, pos)
        self._maybe_add_time()
        self.rewrite_indexes()

    def index_batch(self, base_offset: int, size: int, max_timestamp: int, position: int) -> None:
        """Account for a frame just appended (or found by recovery) at ``position``."""
        if self._since_index >= self.index_interval_bytes:
            self._rel_offsets.append(base_offset - self.base_offset)
            self._positions.append(position)
            self._since_index = 0
            self._maybe_add_time()
        self._since_index += size
        if self._max_timestamp is None or max_timestamp > self._max_timestamp:
            self._max_timestamp = max_timestamp
            self._max_ts_offset = base_offset

    def _maybe_add_time(self) -> None:
        mt = self._max_timestamp
        if mt is not None and mt != NO_TIMESTAMP and (not self._times or mt > self._times[-1]):
            self._times.append(mt)
            self._time_offsets.append(self._max_ts_offset - self.base_offset)

    def persist_indexes(self, *, force: bool = False) -> None:
        """Append the index entries not yet on disk (batched: every few dozen entries).

        The indexes are derived data, so a failure here only costs recovery work.
        """
        pending = len(self._rel_offsets) - self._persisted_index
        if not force and pending < _PERSIST_EVERY:
            return
        try:
            if pending:
                with open(self.index_path, "ab") as f:
                    f.write(
                        b"".join(
                            INDEX_ENTRY.pack(self._rel_offsets[i], self._positions[i])
                            for i in range(self._persisted_index, len(self._rel_offsets))
                        )
                    )
                self._persisted_index = len(self._rel_offsets)
            if len(self._times) > self._persisted_times:
                with open(self.timeindex_path, "ab") as f:
                    f.write(
                        b"".join(
                            TIME_ENTRY.pack(self._times[i], self._time_offsets[i])
                            for i in range(self._persisted_times, len(self._times))
                        )
                    )
                self._persisted_times = len(self._times)
        except OSError as exc:
            log.warning("could not write the indexes of %s: %s", self.log_path, exc)

    def rewrite_indexes(self) -> None:
        """Replace both index files with the entries in memory (after recovery or a rebuild)."""
        for path, data in (
            (self.index_path, b"".join(INDEX_ENTRY.pack(r, p) for r, p in zip(self._rel_offsets, self._positions))),
            (self.timeindex_path, b"".join(TIME_ENTRY.pack(t, o) for t, o in zip(self._times, self._time_offsets))),
        ):
            tmp = path.with_name(path.name + ".tmp")
            try:
                if path.exists() and path.read_bytes() == data:
                    continue
                tmp.write_bytes(data)
                os.replace(tmp, path)
            except OSError as exc:
                log.warning("could not rewrite %s: %s", path, exc)
        self._persisted_index = len(self._rel_offsets)
        self._persisted_times = len(self._times)

    def seal(self) -> None:
        """Stop appending: record the newest timestamp in the time index and persist both."""
        self._maybe_add_time()
        self.persist_indexes(force=True)
        for path in (self.index_path, self.timeindex_path):
            path.touch()  # a sealed segment always has both (a missing one means: rebuild)

    @property
    def max_timestamp(self) -> int | None:
        """Greatest batch max_timestamp in the segment; None when it holds no batch."""
        if self._max_timestamp is None:
            self._max_timestamp = self._read_max_timestamp()
        return None if self._max_timestamp == NO_TIMESTAMP else self._max_timestamp

    def _read_max_timestamp(self) -> int:
        """A sealed segment's newest timestamp: the last time entry, without opening the log."""
        try:
            with open(self.timeindex_path, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                if end and end % TIME_ENTRY.size == 0:
                    f.seek(end - TIME_ENTRY.size)
                    return TIME_ENTRY.unpack(f.read(TIME_ENTRY.size))[0]
        except FileNotFoundError:
            pass
        if self.size == 0:
            return NO_TIMESTAMP
        self.open_sealed()  # rebuilds the time index
        mt = self._max_timestamp
        self.close()
        return NO_TIMESTAMP if mt is None else mt

    # -- reading -------------------------------------------------------------------

    def read(self, position: int, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` from ``position`` (os.pread: no shared file offset)."""
        assert self.fd is not None, f"{self.log_path} is not open"
        return os.pread(self.fd, max_bytes, position)

    def scan(self, start: int, end: int) -> Iterator[Located]:
        """Yield the frames that start in [start, end), reading headers only.

        Headers are read in blocks, then each frame's ``size`` is skipped; a frame
        that would reach past ``end``, or a header that does not parse, ends the scan
        (recovery checks frames itself). Never seeks backwards.
        """
        pos = start
        block = b""
        block_at = start
        while pos + HEADER_SIZE <= end:
            if pos + MAX_HEADER_SIZE > block_at + len(block) and block_at + len(block) < end:
                block_at = pos
                block = self.read(pos, min(_SCAN_BLOCK, end - pos))
                if len(block) < HEADER_SIZE:
                    return
            h = try_read_header(block, pos - block_at)
            if h is None or h.length < HEADER_SIZE - LENGTH_END or pos + h.size > end:
                return
            yield Located(pos, h)
            pos += h.size

    def _floor_entry(self, offset: int) -> tuple[int, int]:
        """(base offset, position) of the greatest index entry at or below ``offset``."""
        i = bisect.bisect_right(self._rel_offsets, offset - self.base_offset) - 1
        if i < 0:
            return self.base_offset, 0
        return self.base_offset + self._rel_offsets[i], self._positions[i]

    def locate(self, offset: int, end: int) -> Located | None:
        """The frame holding ``offset`` among the frames below byte ``end``."""
        _, start = self._floor_entry(offset)
        for found in self.scan(start, end):
            if found.header.next_offset > offset:
                return found if found.header.base_offset <= offset else None
        return None

    def read_from(self, found: Located, max_bytes: int, end: int) -> bytes:
        """Whole frames from ``found`` on, up to ``max_bytes`` but at least that frame."""
        first = found.header.size
        if first >= max_bytes:
            return self.read(found.position, first)
        data = self.read(found.position, min(max_bytes, end - found.position))
        # cut a frame the byte budget splits: walk the length fields in memory
        pos = first
        n = len(data)
        while pos + LENGTH_END <= n:
            size = LENGTH_END + _LENGTH.unpack_from(data, pos + 8)[0]
            if pos + size > n:
                break
            pos += size
        return data if pos == n else data[:pos]

    def offset_for_timestamp(self, ts: int, end: int) -> int | None:
        """Base offset of the first frame below ``end`` whose max_timestamp >= ``ts``."""
        i = bisect.bisect_left(self._times, ts) - 1
        start = 0
        if i >= 0:
            start = self._floor_entry(self.base_offset + self._time_offsets[i])[1]
        for _, h in self.scan(start, end):
            if h.max_timestamp >= ts:
                return h.base_offset
        return None

    # -- writing -------------------------------------------------------------------

    def write(self, iov: list, nbytes: int) -> int:
        """Append ``iov`` (``nbytes`` in all) at ``size``; return the position written at.

        Loops on short writes and passes at most IOV_MAX buffers per call. On any
        OSError the file is truncated back to where it was and the error raised.
        """
        assert self.fd is not None
        start = self.size
        pos = start
        pending = list(iov)
        try:
            while pending:
                done = os.pwritev(self.fd, pending[:IOV_MAX], pos)
                if done <= 0:
                    raise OSError(errno.EIO, f"pwritev wrote nothing to {self.log_path}")
                pos += done
                k = 0
                while k < len(pending) and done >= len(pending[k]):
                    done -= len(pending[k])
                    k += 1
                del pending[:k]
                if done:  # short write inside a buffer: keep its unwritten tail
                    pending[0] = memoryview(pending[0])[done:]
        except OSError:
            self.truncate(start)
            raise
        assert pos - start == nbytes, (pos, start, nbytes)
        self.size = pos
        return start

    def truncate(self, size: int) -> None:
        """Cut the .log back to ``size`` bytes (undoing a failed write)."""
        assert self.fd is not None
        try:
            os.ftruncate(self.fd, size)
        except OSError:
            log.exception("could not truncate %s back to %d bytes", self.log_path, size)
            raise
        self.size = size

    # -- recovery ------------------------------------------------------------------

    def recover(self, check_from: int | None = 0) -> list[Located]:
        """Open a segment after a crash; return every whole frame it keeps.

        Every frame gets a header check (magic, lengths, contiguous offsets); frames
        holding offsets at or above ``check_from`` (the log's recovery point: not known
        to be fsynced) also get their CRC checked. ``check_from=None`` is for a process
        crash on a machine that kept running, where only the tail of the active segment
        can be torn: CRCs are checked from the last index entry that points at a valid
        frame on. The file is cut at the first bad or partial frame, with a WARNING.
        Indexes are rebuilt from the frames found. The segment stays open (read-write);
        ``next_offset`` is one past its last frame.
        """
        fd = os.open(self.log_path, os.O_RDWR)
        self.fd = fd
        file_size = os.fstat(fd).st_size
        self.size = file_size
        if check_from is None:
            check_from = self._last_valid_entry_offset()
        self._reset_index()
        self._max_timestamp = NO_TIMESTAMP
        frames: list[Located] = []
        expected = self.base_offset
        good = 0
        for found in self.scan(0, file_size):
            pos, h = found
            if (
                h.magic not in STORED_MAGICS
                or h.record_count < 1
                or h.length < HEADER_SIZE + 1 - LENGTH_END
                or h.base_offset != expected
                or (h.next_offset > check_from and not self._crc_ok(pos, h))
            ):
                break
            frames.append(found)
            self.index_batch(h.base_offset, h.size, h.max_timestamp, pos)
            expected = h.next_offset
            good = pos + h.size
        if good < file_size:
            log.warning(
                "recovery cut %s at byte %d (offset %d): %d bytes of torn or corrupt data removed",
                self.log_path,
                good,
                expected,
                file_size - good,
            )
            self.truncate(good)
        self.next_offset = expected
        self.rewrite_indexes()
        return frames

    def truncate_to_offset(self, offset: int) -> int:
        """Cut the open segment before the batch that holds ``offset``; return the new next offset.

        Nothing happens when ``offset`` is at or past the segment's end.
        """
        found = self.locate(offset, self.size)
        if found is None:
            return self.next_offset
        self.truncate(found.position)
        self.next_offset = found.header.base_offset
        self._reset_index()
        self._max_timestamp = NO_TIMESTAMP
        for pos, h in self.scan(0, self.size):
            self.index_batch(h.base_offset, h.size, h.max_timestamp, pos)
        self.rewrite_indexes()
        return self.next_offset

    def _crc_ok(self, pos: int, h: FrameHeader) -> bool:
        body = self.read(pos + CRC_START, h.size - CRC_START)
        return len(body) == h.size - CRC_START and crc32c(body) == h.crc

    def resume(self, *, size: int, next_offset: int, max_timestamp: int, max_ts_offset: int) -> bool:
        """Open the active segment after a clean shutdown, trusting its indexes.

        Returns False (nothing opened) when the files do not match what the
        shutdown recorded, so the caller recovers instead.
        """
        fd = os.open(self.log_path, os.O_RDWR)
        if os.fstat(fd).st_size != size:
            os.close(fd)
            return False
        self.fd = fd
        self.size = size
        if not self._load_indexes(sealed=False):
            self.close()
            return False
        self.next_offset = next_offset
        self._max_timestamp = max_timestamp
        self._max_ts_offset = max_ts_offset
        return True

    @property
    def max_ts_offset(self) -> int:
        return self._max_ts_offset

    def delete_files(self) -> None:
        """Rename every file to ``.deleted`` and then unlink it (a crash in between leaves
        only ``.deleted`` files, which start-up removes)."""
        self.close()
        doomed = []
        for path in (self.log_path, self.index_path, self.timeindex_path):
            target = path.with_name(path.name + ".deleted")
            try:
                os.replace(path, target)
                doomed.append(target)
            except FileNotFoundError:
                pass
        for target in doomed:
            target.unlink(missing_ok=True)


class OpenSegments:
    """A small LRU of open sealed segments, so thousands of partitions keep few fds.

    Shared by every log of a broker; the active segments are not in it.
    """

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self._open: OrderedDict[Segment, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def acquire(self, segment: Segment) -> Segment:
        """Make sure ``segment`` is open and mark it as just used."""
        if segment in self._open:
            self._open.move_to_end(segment)
            return segment
        if not segment.is_open:
            segment.open_sealed()
        self._open[segment] = None
        while len(self._open) > self.capacity:
            old, _ = self._open.popitem(last=False)
            old.close()
        return segment

    def discard(self, segment: Segment) -> None:
        """Forget (and close) a segment about to be deleted or closed by its log."""
        if self._open.pop(segment, 0) is None:
            segment.close()
