"""Retention by size and by age deletes whole sealed segments and moves the log start."""

from __future__ import annotations

import os

import pytest

from shoal.broker.storage import PartitionLog
from shoal.client.errors import OffsetOutOfRange
from shoal.client.records import decode_fetch, encode_batch


def batch(ts: int, n: int = 2) -> bytes:
    return encode_batch([(None, b"r" * 30, None, ts) for _ in range(n)])


@pytest.fixture
def open_small_log(open_log):
    """Logs that roll every 400 bytes, so a few appends make several segments."""
    return lambda **config: open_log(**{"segment_bytes": 400, **config})


def log_files(plog: PartitionLog) -> list[str]:
    return sorted(n for n in os.listdir(plog.directory) if n.endswith(".log"))


async def test_size_retention_deletes_oldest_segments(open_small_log):
    """While the log is larger than retention_bytes, the oldest sealed segments go."""
    plog = await open_small_log(retention_bytes=1_000)
    for i in range(40):
        await plog.append(batch(1_000 + i))
    count, size = plog.segment_count, plog.size_bytes
    deleted = await plog.enforce_retention()
    assert deleted > 0
    assert plog.segment_count == count - deleted
    assert plog.size_bytes <= 1_000 < size
    assert plog.log_start_offset > 0
    assert len(log_files(plog)) == plog.segment_count
    assert not [n for n in os.listdir(plog.directory) if n.endswith(".deleted")]


async def test_reads_below_the_new_log_start_are_out_of_range(open_small_log):
    """After retention, the log start is readable and anything before it is not."""
    plog = await open_small_log(retention_bytes=500)
    for i in range(30):
        await plog.append(batch(1_000 + i))
    await plog.enforce_retention()
    start = plog.log_start_offset
    with pytest.raises(OffsetOutOfRange) as exc:
        plog.read(start - 1, 1 << 20)
    assert exc.value.log_start_offset == start
    records = decode_fetch("t", 0, plog.read(start, 1 << 20))
    assert records[0].offset == start


async def test_age_retention_deletes_segments_older_than_retention_ms(open_small_log):
    """Sealed segments whose newest record is older than retention_ms are deleted."""
    plog = await open_small_log(retention_ms=10_000)
    for i in range(20):
        await plog.append(batch(1_000 + i))  # old
    old_hw = plog.high_watermark
    for i in range(20):
        await plog.append(batch(50_000 + i))  # recent
    assert await plog.enforce_retention(now_ms=55_000) > 0
    assert plog.log_start_offset <= old_hw
    assert plog.offset_for_timestamp(0) == plog.log_start_offset
    assert await plog.enforce_retention(now_ms=55_000) == 0  # what is left is recent enough


async def test_the_active_segment_is_never_deleted(open_small_log):
    """Even when everything is expired, the active segment stays and the HW is kept."""
    plog = await open_small_log(retention_ms=1)
    for i in range(20):
        await plog.append(batch(1_000 + i))
    hw = plog.high_watermark
    await plog.enforce_retention(now_ms=10**12)
    assert plog.segment_count == 1
    assert plog.high_watermark == hw
    assert (await plog.append(batch(2_000))).base_offset == hw


async def test_no_retention_keeps_everything(open_small_log):
    """With both limits None nothing is deleted."""
    plog = await open_small_log()
    for i in range(20):
        await plog.append(batch(1_000 + i))
    assert await plog.enforce_retention(now_ms=10**12) == 0
    assert plog.log_start_offset == 0


async def test_log_start_survives_a_restart(open_small_log):
    """After retention and a restart, the log starts where retention left it."""
    plog = await open_small_log(retention_bytes=600)
    for i in range(30):
        await plog.append(batch(1_000 + i))
    await plog.enforce_retention()
    start, hw = plog.log_start_offset, plog.high_watermark
    await plog.stop()
    again = await open_small_log()
    assert (again.log_start_offset, again.high_watermark) == (start, hw)


async def test_leftover_deleted_files_are_removed_at_start(open_small_log, tmp_path):
    """A crash between rename and unlink leaves .deleted files; start-up removes them."""
    plog = await open_small_log()
    await plog.append(batch(1))
    await plog.stop()
    leftover = tmp_path / "t-0" / "00000000000000000000.log.deleted"
    leftover.write_bytes(b"junk")
    await open_small_log()
    assert not leftover.exists()
