"""Kafka v2 batches in a partition log: stored as they came beside shoal frames, recovered,
deduplicated by producer sequence, and read back by either protocol."""

from __future__ import annotations

import struct

import cramjam
import pytest
from crc32c import crc32c

from shoal.broker.kafka import as_shoal_frames
from shoal.broker.kafka.records import as_kafka_batches, check_batches
from shoal.broker.storage import LogConfig, PartitionLog
from shoal.broker.storage.checkpoint import CLEAN_SHUTDOWN
from shoal.client.errors import CorruptBatch
from shoal.client.records import decode_fetch, encode_batch, iter_frames

ACTIVE = "00000000000000000000.log"
CODECS = {"none": (0, None), "gzip": (1, cramjam.gzip.compress), "zstd": (4, cramjam.zstd.compress)}


def kafka_batch(records, *, producer_id: int = -1, base_sequence: int = -1, codec: str = "none") -> bytes:
    """A Kafka v2 batch as a producer sends it (base offset 0), compressed with ``codec``."""
    batch = bytearray(as_kafka_batches(encode_batch(records, producer_id=producer_id, base_sequence=base_sequence)))
    code, compress = CODECS[codec]
    if compress is not None:
        batch = batch[:61] + bytes(compress(bytes(batch[61:])))
        struct.pack_into(">h", batch, 21, code)
    struct.pack_into(">i", batch, 8, len(batch) - 12)
    struct.pack_into(">I", batch, 17, crc32c(batch[21:]))
    return bytes(batch)


def rows(records):
    return [(r.offset, r.key, r.value, r.timestamp) for r in records]


def read_all(plog: PartitionLog) -> list:
    """Every record, as shoal's HTTP fetch serves them (Kafka batches converted)."""
    return list(decode_fetch("t", 0, as_shoal_frames(plog.read(0, 1 << 20))))


async def append_kafka(plog: PartitionLog, body: bytes):
    return await plog.append(body, check_batches(body))


async def test_kafka_batches_are_stored_as_they_came_and_read_by_both_protocols(open_log):
    plog = await open_log()
    shoal = encode_batch([(b"s%d" % i, b"shoal-%d" % i, None, 1000 + i) for i in range(3)])
    gz = kafka_batch([(b"g%d" % i, b"gzip-%d" % i, {"h": b"x"}, 2000 + i) for i in range(4)], codec="gzip")
    zs = kafka_batch([(None, b"zstd-%d" % i, None, 3000 + i) for i in range(2)], codec="zstd")
    assert (await plog.append(shoal)).base_offset == 0
    assert (await append_kafka(plog, gz)).base_offset == 3
    assert (await append_kafka(plog, zs + kafka_batch([(b"k", b"plain", None, 4000)]))).base_offset == 7
    stored = plog.read(0, 1 << 20)
    frames = [bytes(f) for _, f in iter_frames(stored, check_crc=False)]
    assert frames[1][8:] == gz[8:] and frames[2][8:] == zs[8:]  # byte for byte, but the patched base offset
    assert [struct.unpack_from(">q", f)[0] for f in frames] == [0, 3, 7, 9]
    assert rows(read_all(plog)) == (
        [(i, b"s%d" % i, b"shoal-%d" % i, 1000 + i) for i in range(3)]
        + [(3 + i, b"g%d" % i, b"gzip-%d" % i, 2000 + i) for i in range(4)]
        + [(7 + i, None, b"zstd-%d" % i, 3000 + i) for i in range(2)]
        + [(9, b"k", b"plain", 4000)]
    )
    kafka = as_kafka_batches(stored)
    assert [bytes(f)[8:] for _, f in iter_frames(kafka, check_crc=False)][1:3] == [gz[8:], zs[8:]]
    assert plog.offset_for_timestamp(2002) == 3  # the batch holding it
    assert plog.read(5, 1)[:8] == struct.pack(">q", 3)  # the whole batch that contains offset 5


async def test_a_retried_kafka_batch_gets_its_original_offsets(open_log):
    plog = await open_log()
    first = kafka_batch([(None, b"a", None, 1), (None, b"b", None, 2)], producer_id=77, base_sequence=0)
    await plog.append(encode_batch([(None, b"other", None, 1)]))
    result = await append_kafka(plog, first)
    again = await append_kafka(plog, first)
    assert (again.base_offset, again.duplicate) == (result.base_offset, True)
    assert plog.high_watermark == 3


@pytest.mark.parametrize("damage", ["torn", "flipped"])
async def test_recovery_keeps_kafka_batches_and_cuts_a_torn_or_corrupt_one(tmp_path, damage):
    directory = tmp_path / "t-0"
    plog = PartitionLog(directory, "t", 0, LogConfig())
    await plog.start()
    await plog.append(encode_batch([(None, b"s", None, 1)]))
    for i in range(3):
        await append_kafka(plog, kafka_batch([(None, b"k%d" % i, None, 10 + i)], producer_id=5, base_sequence=i))
    before = rows(read_all(plog))
    await plog.stop()
    (directory / CLEAN_SHUTDOWN).unlink()
    plog = PartitionLog(directory, "t", 0, LogConfig())
    await plog.start()
    assert rows(read_all(plog)) == before  # a crash-restart keeps every Kafka batch
    await plog.stop()
    (directory / CLEAN_SHUTDOWN).unlink()
    log_file = directory / ACTIVE
    data = bytearray(log_file.read_bytes())
    if damage == "torn":
        data = data[:-3]
    else:
        data[-2] ^= 0xFF  # a record byte under the Kafka CRC
    log_file.write_bytes(bytes(data))
    plog = PartitionLog(directory, "t", 0, LogConfig())
    await plog.start()
    assert rows(read_all(plog)) == before[:-1]
    assert plog.high_watermark == 3
    await plog.stop()


@pytest.mark.parametrize("damage", ["crc", "count", "magic", "transactional", "short"])
def test_bad_kafka_batches_are_refused(damage):
    batch = bytearray(kafka_batch([(None, b"a", None, 1), (None, b"b", None, 2)]))
    if damage == "crc":
        batch[-1] ^= 1
    elif damage == "count":
        struct.pack_into(">i", batch, 57, 3)
        struct.pack_into(">I", batch, 17, crc32c(batch[21:]))
    elif damage == "magic":
        batch[16] = 1
    elif damage == "transactional":
        struct.pack_into(">h", batch, 21, 0x10)
        struct.pack_into(">I", batch, 17, crc32c(batch[21:]))
    else:
        batch = batch[:-1]
    with pytest.raises(CorruptBatch):
        check_batches(bytes(batch))
