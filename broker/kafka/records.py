"""Kafka v2 record batches beside shoal frames: checking them, and converting for readers.

A Kafka v2 record batch (all integers big-endian)::

    offset  size  field
    0       8     baseOffset            i64
    8       4     batchLength           i32  bytes after this field
    12      4     partitionLeaderEpoch  i32
    16      1     magic                 i8   2
    17      4     crc                   u32  CRC32C of bytes [21, 12 + batchLength)
    21      2     attributes            i16  bits 0-2 compression (0 none, 1 gzip, 2 snappy,
                                             3 lz4, 4 zstd), 3 timestamp type, 4 transactional,
                                             5 control
    23      4     lastOffsetDelta       i32
    27      8     baseTimestamp         i64
    35      8     maxTimestamp          i64
    43      8     producerId            i64
    51      2     producerEpoch         i16
    53      4     baseSequence          i32
    57      4     recordCount           i32
    61      ...   records, compressed as a whole when attributes say so; each
                  varint length, i8 attributes, varlong timestampDelta, varint offsetDelta,
                  varint keyLength + key, varint valueLength + value,
                  varint headerCount, then per header varint keyLength + key (UTF-8),
                  varint valueLength + value (-1 for null)

A produced batch is checked (``check_batches``) and stored as it came, beside shoal's
own frames: base offset and length sit where a shoal frame has them, so the storage
engine patches the base offset the same way, and ``client.records.read_header`` reads
its header. Readers get what their protocol speaks: ``as_kafka_batches`` hands Kafka
batches out as stored and converts shoal frames; ``to_shoal_frames`` converts Kafka
batches for shoal clients and the JSON API. A conversion keeps the base offset, keys,
values, timestamps, producer id and base sequence. Shoal headers are a map: a repeated
Kafka header key keeps its last value and a null header value becomes empty bytes.
Converted batches are uncompressed.

The varint and nullable-bytes primitives are kio's. Decompression uses cramjam (one
maintained binding for gzip, snappy, lz4 frames and zstd); snappy comes raw from
librdkafka and in xerial framing from the Java client, and both are read.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator

import cramjam
import msgpack
from crc32c import crc32c
from kio.records.readers import read_signed_compact_string_as_bytes_nullable as _read_bytes
from kio.records.writers import write_signed_compact_bytes as _write_bytes
from kio.serial.readers import read_int8, read_signed_varint, read_signed_varlong
from kio.serial.writers import write_int8, write_signed_varint, write_signed_varlong

from shoal.client.errors import CorruptBatch
from shoal.client.records import HEADER_SIZE as SHOAL_HEADER_SIZE
from shoal.client.records import KAFKA_HEADER as HEADER
from shoal.client.records import KAFKA_MAGIC as MAGIC
from shoal.client.records import FrameHeader, encode_batch, iter_frames, read_header

HEADER_SIZE = HEADER.size  # 61
CRC_START = 21
COMPRESSION_MASK = 0x07
TRANSACTIONAL_FLAG = 0x10
CONTROL_FLAG = 0x20
_XERIAL = b"\x82SNAPPY\x00"

Record = tuple[bytes | None, bytes | None, dict[str, bytes] | None, int]


def _decompress(codec: int, data: bytes) -> bytes:
    if codec == 1:
        return bytes(cramjam.gzip.decompress(data))
    if codec == 2:
        if data.startswith(_XERIAL):
            return _unxerial(data)
        return bytes(cramjam.snappy.decompress_raw(data))
    if codec == 3:
        return bytes(cramjam.lz4.decompress(data))
    if codec == 4:
        return bytes(cramjam.zstd.decompress(data))
    raise CorruptBatch(f"unknown compression codec {codec}")


def _unxerial(data: bytes) -> bytes:
    """Java's snappy framing: a 16-byte header, then (i32 length, raw snappy block) pairs."""
    out = []
    pos = 16
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from(">i", data, pos)
        pos += 4
        out.append(bytes(cramjam.snappy.decompress_raw(data[pos : pos + n])))
        pos += n
    return b"".join(out)


def _records(data: bytes, count: int, base_ts: int) -> list[Record]:
    pos = 0

    def take(reader):
        nonlocal pos
        value, size = reader(data, pos)
        pos += size
        return value

    out: list[Record] = []
    for i in range(count):
        length = take(read_signed_varint)
        end = pos + length
        take(read_int8)  # record attributes: unused
        ts_delta = take(read_signed_varlong)
        offset_delta = take(read_signed_varint)
        if offset_delta != i:
            raise CorruptBatch(f"record {i} has offset delta {offset_delta}")
        key = take(_read_bytes)
        value = take(_read_bytes)
        headers = {}
        for _ in range(take(read_signed_varint)):
            hkey = take(_read_bytes)
            headers[(hkey or b"").decode()] = take(_read_bytes) or b""
        if pos != end:
            raise CorruptBatch(f"record {i} declares {length} bytes but holds {pos - end + length}")
        out.append((key, value, headers or None, base_ts + ts_delta))
    if pos != len(data):
        raise CorruptBatch(f"{len(data) - pos} bytes follow the last record")
    return out


def check_batches(data: bytes | memoryview, *, max_batch_bytes: int | None = None) -> list[FrameHeader]:
    """The storage headers of the Kafka v2 batches of a produce request, after checking them.

    Checks each batch's length, magic, CRC32C, record count and that its records
    decode (decompressing them), as Kafka's broker validates a batch before appending
    it. Raises CorruptBatch for anything else than whole, valid v2 batches, including
    transactional and control batches, which shoal does not support.
    """
    view = memoryview(data)
    headers = []
    for pos, h in _batches(view, max_batch_bytes):
        _decode(view, pos, h)
        headers.append(read_header(view, pos))
    if not headers:
        raise CorruptBatch("no record batch in the produce request")
    return headers


def _decode(view, pos: int, h: tuple) -> list[Record]:
    """The records of the batch at ``pos`` whose header fields are ``h``."""
    attributes = h[5]
    if attributes & (CONTROL_FLAG | TRANSACTIONAL_FLAG):
        raise CorruptBatch(f"batch at byte {pos} is transactional: transactions are not supported")
    count = h[12]
    if count < 1 or h[6] != count - 1:
        raise CorruptBatch(f"batch at byte {pos} holds {count} records but lastOffsetDelta {h[6]}")
    body = bytes(view[pos + HEADER_SIZE : pos + 12 + h[1]])
    codec = attributes & COMPRESSION_MASK
    try:
        if codec:
            body = _decompress(codec, body)
        return _records(body, count, h[7])
    except CorruptBatch:
        raise
    except Exception as exc:  # a codec or a varint read failing on bad bytes
        raise CorruptBatch(f"batch at byte {pos} does not decode: {exc}") from None


def _batches(view: memoryview, max_batch_bytes: int | None) -> Iterator[tuple[int, tuple]]:
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise CorruptBatch(f"truncated batch header at byte {pos}")
        h = HEADER.unpack_from(view, pos)
        size = 12 + h[1]
        if h[3] != MAGIC:
            raise CorruptBatch(f"batch at byte {pos} has magic {h[3]}: only v2 record batches are accepted")
        if h[1] < HEADER_SIZE - 12 or pos + size > end:
            raise CorruptBatch(f"batch at byte {pos} declares length {h[1]}, {end - pos - 12} bytes follow")
        if max_batch_bytes is not None and size > max_batch_bytes:
            raise CorruptBatch(f"batch of {size} bytes exceeds {max_batch_bytes}")
        if crc32c(view[pos + CRC_START : pos + size]) != h[4]:
            raise CorruptBatch(f"batch at byte {pos} fails its CRC32C check")
        yield pos, h
        pos += size


def to_shoal_frames(stored: bytes) -> bytes:
    """Stored frames with every Kafka batch among them converted into a shoal frame."""
    out = []
    for h, frame in iter_frames(stored, check_crc=False):
        if h.magic != MAGIC:
            out.append(frame)
            continue
        records = _decode(frame, 0, HEADER.unpack_from(frame, 0))
        out.append(encode_batch(records, producer_id=h.producer_id, base_sequence=h.base_sequence, base_offset=h.base_offset))
    return b"".join(out)


def as_kafka_batches(stored: bytes | memoryview, *, leader_epoch: int = 0) -> bytes:
    """Kafka v2 batches for stored frames: Kafka batches as stored, shoal frames converted
    (one uncompressed batch each, stamped with ``leader_epoch``)."""
    out = []
    for h, frame in iter_frames(stored, check_crc=False):
        if h.magic == MAGIC:
            out.append(frame)
        else:
            entries = msgpack.unpackb(frame[SHOAL_HEADER_SIZE:], raw=False, use_list=False)
            out.append(_encode_v2(h, entries, h.leader_epoch if h.leader_epoch >= 0 else leader_epoch))
    return b"".join(out)


def _encode_v2(h: FrameHeader, entries, leader_epoch: int) -> bytes:
    body = io.BytesIO()
    for i, (ts_delta, key, value, headers) in enumerate(entries):
        rec = io.BytesIO()
        write_int8(rec, 0)
        write_signed_varlong(rec, ts_delta)
        write_signed_varint(rec, i)
        _write_bytes(rec, key)
        _write_bytes(rec, value)
        headers = headers or {}
        write_signed_varint(rec, len(headers))
        for hkey, hval in headers.items():
            _write_bytes(rec, hkey.encode())
            _write_bytes(rec, hval)
        raw = rec.getvalue()
        write_signed_varint(body, len(raw))
        body.write(raw)
    count = len(entries)
    producer_id = h.producer_id if h.producer_id >= 0 else -1
    tail = struct.pack(
        ">hiqqqhii", 0, count - 1, h.first_timestamp, h.max_timestamp, producer_id,
        0 if producer_id >= 0 else -1, h.base_sequence if producer_id >= 0 else -1, count,
    ) + body.getvalue()
    crc = crc32c(tail)
    return struct.pack(">qiiBI", h.base_offset, len(tail) + 9, leader_epoch, MAGIC, crc) + tail

