"""Record batch framing: the bytes a producer sends, a broker stores and a fetch returns.

A batch is one frame. All integers are big-endian.

    offset  size  field
    0       8     base_offset      i64  offset of the first record; the producer writes 0,
                                        the broker patches it in place (not under the CRC)
    8       4     length           u32  bytes after this field (so frame size = 12 + length)
    12      4     leader_epoch     i32  the leader epoch the batch was written in; the producer
                                        writes -1, the leader patches it (not under the CRC)
    16      1     magic            u8   3
    17      4     crc              u32  CRC32C (Castagnoli) of bytes [21, 12 + length)
    21      1     attributes       u8   0 (reserved: compression, transactional)
    22      4     record_count     u32  >= 1; equals the length of the msgpack array below
    26      8     first_timestamp  i64  ms since the epoch of the first record
    34      8     max_timestamp    i64  greatest record timestamp in the batch
    42      8     producer_id      i64  -1 when the producer is not idempotent
    50      4     base_sequence    i32  sequence number of the first record, -1 when none
    54      ...   records          msgpack array of record_count entries, each
                                        [timestamp_delta: int, key: bin|nil, value: bin|nil,
                                         headers: map str->bin | nil]

Record ``i`` of a batch has offset ``base_offset + i`` and timestamp
``first_timestamp + timestamp_delta``, at most ``max_timestamp``. On produce the broker
checks the frame (length, magic, CRC) and that its records decode to exactly that shape
(``validate_frames``, decoding them once with msgspec's typed C decoder), so an
accepted batch is a decodable one; it then patches base_offset and leader_epoch and
stores the frame as it came; a fetch returns stored frames byte for byte, and a
follower stores the leader's frames unchanged.

The first 21 bytes are laid out as in Kafka's v2 record batch (base offset, length,
partition leader epoch, magic, CRC of bytes 21 onward). A broker also stores Kafka v2
record batches, as its Kafka listener received them, beside these frames: the magic
byte at 16 (``KAFKA_MAGIC``, 2; shoal frames never use it) tells them apart, and
``read_header`` reads either kind into a ``FrameHeader`` (record_count =
lastOffsetDelta + 1). The leader patches the epoch of both kinds alike. Clients never
receive Kafka batches: the broker converts them into shoal frames when it answers a
fetch. Magic 1 (the layout before the leader epoch, magic at byte 16 as well) is no
longer written nor read.
"""

from __future__ import annotations

import struct
import time
from contextlib import nullcontext
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import repeat
from operator import add, attrgetter, itemgetter
from typing import NamedTuple, overload

import msgpack
import msgspec
from crc32c import crc32c

from .errors import BatchTooLarge, CorruptBatch, CorruptRecordError
from .gc_pause import gc_paused
from .structs import Record

try:
    from ._records import build_records as _compiled_build_records
except ImportError:  # built without a C compiler: build_records_python below
    _compiled_build_records = None

MAGIC = 3
OLD_MAGIC = 1  # frames without a leader epoch: refused with a clear message
HEADER = struct.Struct(">qIiBIBIqqqi")
HEADER_SIZE = HEADER.size  # 54
assert HEADER_SIZE == 54
LENGTH_END = 12  # base_offset + length: frame size = LENGTH_END + length
MAGIC_AT = 16
CRC_START = 21  # the same for Kafka v2 batches
_BASE_OFFSET = struct.Struct(">q")
_PATCHED = struct.Struct(">qIi")  # base_offset, length, leader_epoch: what the leader writes
_PREFIX_CRC = struct.Struct(">qIiBI")  # base_offset, length, leader_epoch, magic, crc
_HEAD_AFTER_CRC = struct.Struct(">BIqqqi")  # attributes .. base_sequence: the covered header fields
assert _PREFIX_CRC.size + _HEAD_AFTER_CRC.size == HEADER_SIZE
NO_PRODUCER = -1
NO_SEQUENCE = -1
NO_EPOCH = -1
KAFKA_MAGIC = 2
# baseOffset, batchLength, partitionLeaderEpoch, magic, crc, attributes, lastOffsetDelta,
# baseTimestamp, maxTimestamp, producerId, producerEpoch, baseSequence, recordCount
KAFKA_HEADER = struct.Struct(">qiiBIhiqqqhii")
KAFKA_HEADER_SIZE = KAFKA_HEADER.size  # 61
MAX_HEADER_SIZE = max(HEADER_SIZE, KAFKA_HEADER_SIZE)
STORED_MAGICS = (MAGIC, KAFKA_MAGIC)


class FrameHeader(NamedTuple):
    """The fixed header of one stored batch."""

    base_offset: int
    length: int
    leader_epoch: int
    magic: int
    crc: int
    attributes: int
    record_count: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    base_sequence: int

    @property
    def size(self) -> int:
        """Bytes the whole frame takes."""
        return LENGTH_END + self.length

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.record_count - 1

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.record_count


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def encode_batch(
    records: Sequence[tuple[bytes | None, bytes | None, Mapping[str, bytes] | None, int | None]],
    *,
    producer_id: int = NO_PRODUCER,
    base_sequence: int = NO_SEQUENCE,
    base_offset: int = 0,
) -> bytes:
    """Frame ``(key, value, headers, timestamp_ms)`` tuples as one batch.

    A ``None`` timestamp means now. Raises ValueError for an empty batch.
    """
    if not records:
        raise ValueError("a batch holds at least one record")
    now = None
    stamps = []
    for r in records:
        ts = r[3]
        if ts is None:
            ts = now if now is not None else (now := now_ms())
        stamps.append(ts)
    first = stamps[0]
    body = msgpack.packb(
        [[ts - first, r[0], r[1], dict(r[2]) if r[2] else None] for r, ts in zip(records, stamps)],
        use_bin_type=True,
    )
    return frame_records(
        body,
        record_count=len(records),
        first_timestamp=first,
        max_timestamp=max(stamps),
        producer_id=producer_id,
        base_sequence=base_sequence,
        base_offset=base_offset,
    )


def frame_records(
    body: bytes | bytearray | memoryview,
    *,
    record_count: int,
    first_timestamp: int,
    max_timestamp: int,
    producer_id: int = NO_PRODUCER,
    base_sequence: int = NO_SEQUENCE,
    base_offset: int = 0,
    items_only: bool = False,
) -> bytes:
    """Wrap an already msgpack-encoded records array in a frame header (one copy of ``body``).

    With ``items_only``, ``body`` holds the ``record_count`` encoded records without the
    array header, which is written here.
    """
    head = _HEAD_AFTER_CRC.pack(0, record_count, first_timestamp, max_timestamp, producer_id, base_sequence)
    if items_only:
        head += array_header(record_count)
    crc = crc32c(body, crc32c(head))
    length = CRC_START - LENGTH_END + len(head) + len(body)
    return b"".join((_PREFIX_CRC.pack(base_offset, length, NO_EPOCH, MAGIC, crc), head, body))


def array_header(count: int) -> bytes:
    """The msgpack header of an array of ``count`` items (fixarray, array 16 or array 32)."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def read_header(buf, pos: int = 0) -> FrameHeader:
    """Parse the header of the frame at ``pos``; the caller checks the size first
    (``HEADER_SIZE`` bytes, or ``KAFKA_HEADER_SIZE`` for a Kafka batch)."""
    if buf[pos + MAGIC_AT] == KAFKA_MAGIC:
        (base, length, epoch, magic, crc, attributes, last_delta, first_ts, max_ts, producer_id, _, base_sequence, _) = (
            KAFKA_HEADER.unpack_from(buf, pos)
        )
        return FrameHeader(
            base, length, epoch, magic, crc, attributes, last_delta + 1, first_ts, max_ts, producer_id, base_sequence
        )
    return FrameHeader._make(HEADER.unpack_from(buf, pos))


def try_read_header(buf, pos: int = 0) -> FrameHeader | None:
    """``read_header``, or None when ``buf`` ends before the header does."""
    left = len(buf) - pos
    if left < HEADER_SIZE or (buf[pos + MAGIC_AT] == KAFKA_MAGIC and left < KAFKA_HEADER_SIZE):
        return None
    return read_header(buf, pos)


def patch_base_offset(buf: bytearray | memoryview, pos: int, base_offset: int) -> None:
    """Set the base offset of the frame at ``pos`` (not covered by the CRC)."""
    _BASE_OFFSET.pack_into(buf, pos, base_offset)


def base_offset_bytes(base_offset: int) -> bytes:
    return _BASE_OFFSET.pack(base_offset)


def patched_prefix(base_offset: int, length: int, leader_epoch: int) -> bytes:
    """The first 16 bytes of a frame as the leader stores it (neither field is under the CRC)."""
    return _PATCHED.pack(base_offset, length, leader_epoch)


class _Record(msgspec.Struct, array_like=True, forbid_unknown_fields=True, gc=False):
    """One stored record as the format above spells it: decoding into it checks the shape
    in C (msgspec), and the decoded records are not tracked by the cyclic GC."""

    timestamp_delta: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes] | None


_RECORDS = msgspec.msgpack.Decoder(list[_Record])
_TIMESTAMP_DELTA = attrgetter("timestamp_delta")


def _records_problem(records: memoryview, h: FrameHeader) -> str | None:
    """Why ``records`` is not an array of ``h.record_count`` well-formed records, or None.

    A count the bytes cannot hold (say 2**32-1) fails inside the decoder, which never
    allocates more entries than there are bytes.
    """
    try:
        decoded = _RECORDS.decode(records)
    except msgspec.DecodeError as exc:
        return f"records do not decode: {exc}"
    if len(decoded) != h.record_count:
        return f"records array holds {len(decoded)} entries, record_count says {h.record_count}"
    if h.first_timestamp + max(map(_TIMESTAMP_DELTA, decoded)) > h.max_timestamp:
        return f"a record's timestamp is past the batch's max_timestamp {h.max_timestamp}"
    return None


def validate_frames(body: bytes | bytearray | memoryview, *, max_batch_bytes: int | None = None) -> list[FrameHeader]:
    """Check every frame of a produce body; return their headers in order.

    Checks length, magic and CRC, then decodes each frame's records once into
    ``_Record``s, which checks their shape: what this accepts, ``decode_batch`` decodes. Raises ``CorruptBatch`` for anything that is not a
    sequence of whole, valid frames.
    """
    view = memoryview(body)
    end = len(view)
    pos = 0
    headers: list[FrameHeader] = []
    if end == 0:
        raise CorruptBatch("empty body: expected one or more record batches")
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise CorruptBatch(f"truncated batch header at byte {pos}: {end - pos} bytes left, need {HEADER_SIZE}")
        h = FrameHeader._make(HEADER.unpack_from(view, pos))  # shoal frames only: a Kafka batch fails on magic
        size = h.size
        if size < HEADER_SIZE + 1 or pos + size > end:
            raise CorruptBatch(f"batch at byte {pos} declares length {h.length}, {end - pos - LENGTH_END} bytes follow")
        if max_batch_bytes is not None and size > max_batch_bytes:
            raise BatchTooLarge(f"batch of {size} bytes exceeds {max_batch_bytes}", max_bytes=max_batch_bytes)
        if h.magic != MAGIC:
            raise CorruptBatch(f"batch at byte {pos} has magic {h.magic}, expected {MAGIC}")
        if h.record_count < 1:
            raise CorruptBatch(f"batch at byte {pos} has no records")
        if crc32c(view[pos + CRC_START : pos + size]) != h.crc:
            raise CorruptBatch(f"batch at byte {pos} fails its CRC32C check")
        problem = _records_problem(view[pos + HEADER_SIZE : pos + size], h)
        if problem is not None:
            raise CorruptBatch(f"batch at byte {pos}: {problem}")
        headers.append(h)
        pos += size
    return headers


def iter_frames(buf: bytes | memoryview, *, check_crc: bool = True) -> Iterator[tuple[FrameHeader, memoryview]]:
    """Yield ``(header, frame)`` for each whole frame of fetched bytes.

    A trailing partial frame is ignored (a fetch may cut the last one short).
    Raises ``CorruptRecordError`` on a CRC mismatch when ``check_crc``.
    """
    view = memoryview(buf)
    end = len(view)
    pos = 0
    while end - pos >= HEADER_SIZE:
        h = try_read_header(view, pos)
        if h is None:
            return
        size = h.size
        if size < HEADER_SIZE or pos + size > end:
            return
        frame = view[pos : pos + size]
        if check_crc and crc32c(frame[CRC_START:]) != h.crc:
            raise CorruptRecordError(
                f"batch at offset {h.base_offset} fails its CRC32C check", offset=h.base_offset, next_offset=h.next_offset
            )
        yield h, frame
        pos += size


_new_tuple = tuple.__new__
_DELTA, _KEY, _VALUE, _HEADERS = map(itemgetter, range(4))  # fields of a stored record
_NO_HEADERS: dict = {}  # never handed out: records get copies
_copy_dict = dict.copy
_NO_PAUSE = nullcontext()


class _Columns:
    """Decoded records of one partition, one list per field (appended to frame by frame)."""

    __slots__ = ("offsets", "keys", "values", "timestamps", "headers")

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.keys: list = []
        self.values: list = []
        self.timestamps: list[int] = []
        self.headers: list[dict] = []  # copied for each Record built: each gets a dict of its own

    def add_frame(self, header: FrameHeader, frame: bytes | memoryview, skip: int, pause_gc: bool = False) -> None:
        """Decode a frame's records from the ``skip``-th on; raises ``CorruptRecordError``.

        ``pause_gc``: with the cyclic garbage collector paused (see ``gc_pause``).
        """
        base = header.base_offset
        # Columns are filled by C iterators: no Python bytecode runs per record unless
        # some record has headers. The tuple msgpack makes per record holds only
        # atomic values, so the first collection it meets stops tracking it. On an
        # error the columns are left half filled: the caller truncates or drops them.
        try:
            with gc_paused() if pause_gc else _NO_PAUSE:
                entries = msgpack.unpackb(frame[HEADER_SIZE:], use_list=False, raw=False, strict_map_key=True)
                if entries.__class__ is not tuple:
                    raise TypeError(f"records are a {type(entries).__name__}, not an array")
                if skip:
                    entries = entries[skip:]
                self.timestamps.extend(map(add, map(_DELTA, entries), repeat(header.first_timestamp)))
                self.keys.extend(map(_KEY, entries))
                self.values.extend(map(_VALUE, entries))
                headers = tuple(map(_HEADERS, entries))
                n = len(entries)
                del entries
        except (ValueError, TypeError, IndexError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise CorruptRecordError(
                f"batch at offset {base} does not decode: {exc}", offset=base, next_offset=header.next_offset
            ) from exc
        self.offsets.extend(range(base + skip, base + skip + n))
        if any(headers):
            self.headers.extend([_checked_headers(h, header) for h in headers])
        else:
            self.headers.extend(repeat(_NO_HEADERS, n))

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` records: drops what a frame that failed left half added."""
        for column in (self.offsets, self.keys, self.values, self.timestamps, self.headers):
            del column[n:]


def _checked_headers(headers, header: FrameHeader) -> dict:
    if headers is None:
        return _NO_HEADERS
    if headers.__class__ is not dict:
        raise CorruptRecordError(
            f"batch at offset {header.base_offset} has headers that are not a map: {headers!r:.40}",
            offset=header.base_offset, next_offset=header.next_offset,
        )
    return headers


def _iter_records(cls, topic, partition, offsets, keys, values, timestamps, headers, start, stop) -> Iterator:
    n = stop - start
    if start or stop != len(offsets):
        offsets, keys, values = offsets[start:stop], keys[start:stop], values[start:stop]
        timestamps, headers = timestamps[start:stop], headers[start:stop]
    return map(
        _new_tuple,
        repeat(cls, n),
        zip(repeat(topic, n), repeat(partition, n), offsets, keys, values, timestamps, map(_copy_dict, headers)),
    )


def build_records_python(cls, topic, partition, offsets, keys, values, timestamps, headers, start, stop) -> list:
    """Rows ``[start, stop)`` of the columns as ``cls`` tuples (each with a copy of its
    headers): what ``_records.build_records`` gives, except that CPython's collector
    tracks these (see ``client/_records.c``)."""
    return list(_iter_records(cls, topic, partition, offsets, keys, values, timestamps, headers, start, stop))


# What getmany() builds its lists with (the tests run both).
build_records = _compiled_build_records or build_records_python


class RecordBatch(Sequence[Record]):
    """Consumed records of one partition, in offset order, made into ``Record``s only when read.

    Fetched frames are decoded into columns (one list per field) without running Python
    code per record; indexing and iteration build each ``Record`` in C as it is asked
    for, so a loop over a large batch never holds every record at once (a ``Record``,
    like any tuple subclass, stays tracked by the garbage collector for its whole life,
    and many kept at once are what makes its collections expensive). ``offsets``, ``keys``, ``values``,
    ``timestamps`` give a field of every record without building records at all.
    Slicing gives a ``RecordBatch`` sharing the columns. Each read builds new
    ``Record`` objects (and new headers dicts), equal to the ones before.

    Attributes:
        topic, partition: where the records are stored.
    """

    __slots__ = ("topic", "partition", "_cols", "_start", "_stop")

    def __init__(self, topic: str, partition: int, columns: _Columns, start: int = 0, stop: int | None = None):
        self.topic = topic
        self.partition = partition
        self._cols = columns
        self._start = start
        self._stop = len(columns.offsets) if stop is None else stop

    def __len__(self) -> int:
        return self._stop - self._start

    def _column(self, column: list) -> list:
        if self._start == 0 and self._stop == len(column):
            return column
        return column[self._start : self._stop]

    def _rows(self) -> tuple:
        c = self._cols
        return (Record, self.topic, self.partition, c.offsets, c.keys, c.values, c.timestamps, c.headers,
                self._start, self._stop)  # fmt: skip

    def __iter__(self) -> Iterator[Record]:
        return _iter_records(*self._rows())

    def tolist(self, *, pause_gc: bool = False) -> list[Record]:
        """Every record as a list, equal to ``list(batch)``, built in C where
        ``client/_records.c`` was compiled, and then out of the cyclic collector's
        sight. ``pause_gc``: for the pure-Python fallback, with the collector paused
        meanwhile (see ``gc_pause``)."""
        if pause_gc and build_records is build_records_python:
            with gc_paused():
                return build_records(*self._rows())
        return build_records(*self._rows())

    @overload
    def __getitem__(self, i: int) -> Record: ...

    @overload
    def __getitem__(self, i: slice) -> RecordBatch: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return list(self)[i]
            return RecordBatch(self.topic, self.partition, self._cols, self._start + start, self._start + max(start, stop))
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("RecordBatch index out of range")
        c, j = self._cols, self._start + i
        return _new_tuple(
            Record,
            (self.topic, self.partition, c.offsets[j], c.keys[j], c.values[j], c.timestamps[j], c.headers[j].copy()),
        )

    @property
    def offsets(self) -> list[int]:
        return self._column(self._cols.offsets)

    @property
    def keys(self) -> list[bytes | None]:
        return self._column(self._cols.keys)

    @property
    def values(self) -> list[bytes | None]:
        return self._column(self._cols.values)

    @property
    def timestamps(self) -> list[int]:
        return self._column(self._cols.timestamps)

    @property
    def next_offset(self) -> int | None:
        """The offset after the last record; None when empty."""
        return self._cols.offsets[self._stop - 1] + 1 if self._stop > self._start else None

    def __repr__(self) -> str:
        if not len(self):
            return f"<RecordBatch {self.topic}/{self.partition} empty>"
        c = self._cols
        return f"<RecordBatch {self.topic}/{self.partition} offsets {c.offsets[self._start]}..{c.offsets[self._stop - 1]}>"


def decode_batch(
    topic: str, partition: int, buf: bytes | memoryview, *, min_offset: int = 0, partial: bool = False,
    pause_gc: bool = False,
) -> tuple[RecordBatch, int]:
    """Every record at or after ``min_offset`` in a fetch response body, and the offset after the last frame.

    The offset returned is ``min_offset`` when the body holds no frame past it.
    Raises ``CorruptRecordError`` (naming topic, partition and the first offset that
    could not be read) for a frame that fails its CRC or does not decode; with
    ``partial``, only when no record comes before that frame: otherwise the records
    before it are returned, with the bad frame's offset as the offset to read next.
    ``pause_gc``: decode each frame with the cyclic garbage collector paused.
    """
    cols = _Columns()
    next_offset = min_offset
    good = 0  # records of whole frames
    try:
        for h, frame in iter_frames(buf):
            if h.next_offset <= min_offset:
                continue
            cols.add_frame(h, frame, max(0, min_offset - h.base_offset), pause_gc)
            next_offset = h.next_offset
            good = len(cols.offsets)
    except CorruptRecordError as exc:
        exc.topic, exc.partition = topic, partition
        exc.offset = max(exc.offset, min_offset)
        exc.args = (f"{topic}/{partition}: {exc.args[0]}",)
        if not (partial and good):
            raise
        cols.truncate(good)
    return RecordBatch(topic, partition, cols), next_offset


def decode_records(
    topic: str, partition: int, header: FrameHeader, frame: bytes | memoryview, *, min_offset: int = 0
) -> list[Record]:
    """Decode one frame's records, keeping those at or after ``min_offset``."""
    cols = _Columns()
    cols.add_frame(header, frame, max(0, min_offset - header.base_offset))
    return RecordBatch(topic, partition, cols).tolist()


def decode_fetch(topic: str, partition: int, buf: bytes, *, min_offset: int = 0) -> Iterable[Record]:
    """Every record at or after ``min_offset`` in a fetch response body."""
    return decode_batch(topic, partition, buf, min_offset=min_offset)[0].tolist()
