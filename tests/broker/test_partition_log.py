"""PartitionLog: appends, group commit, reads, rolls, long-polls, flush policies, throttling."""

from __future__ import annotations

import asyncio
import os

import pytest

from shoal.broker.storage import LogConfig, PartitionLog
from shoal.client.errors import OffsetOutOfRange, Throttled
from shoal.client.records import decode_fetch, encode_batch, iter_frames, read_header, validate_frames


def batch(n: int = 1, *, ts: int = 1_000, value: bytes = b"v" * 20) -> bytes:
    return encode_batch([(b"k%d" % i, value + b"%d" % i, None, ts + i) for i in range(n)])


def read_all(plog: PartitionLog, start: int = 0, max_bytes: int = 1 << 20) -> list:
    """Every record from ``start`` to the high watermark, fetch by fetch."""
    out = []
    offset = start
    while offset < plog.high_watermark:
        records = decode_fetch("t", 0, plog.read(offset, max_bytes), min_offset=offset)
        assert records, f"no progress at offset {offset}"
        out.extend(records)
        offset = out[-1].offset + 1
    return out


async def until(predicate, timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_append_assigns_consecutive_offsets(open_log):
    """Each append gets the offsets right after the previous one."""
    plog = await open_log()
    r1 = await plog.append(batch(3))
    r2 = await plog.append(batch(2))
    assert (r1.base_offset, r1.last_offset, r2.base_offset, r2.last_offset) == (0, 2, 3, 4)
    assert plog.high_watermark == 5
    assert not r1.duplicate


async def test_one_body_with_several_frames_is_one_append(open_log):
    """A body of several frames is written as a unit with consecutive offsets."""
    plog = await open_log()
    body = batch(2) + batch(3)
    result = await plog.append(body, validate_frames(body))
    assert (result.base_offset, result.last_offset) == (0, 4)
    assert [h.base_offset for h, _ in iter_frames(plog.read(0, 1 << 20))] == [0, 2]


async def test_more_frames_than_iov_max_in_one_group(open_log):
    """A group of more buffers than IOV_MAX is written in chunks, every frame intact."""
    plog = await open_log(linger_ms=20)
    bodies = [b"".join(batch(1, value=b"%04d" % (i * 10 + j)) for j in range(10)) for i in range(80)]
    results = await asyncio.gather(*(plog.append(body) for body in bodies))
    assert plog.stats.writes == 1 and plog.stats.batches == 800  # 1,600 buffers, IOV_MAX is 1,024 here
    assert [r.base_offset for r in results] == list(range(0, 800, 10))
    assert [r.value[:4] for r in read_all(plog)] == [b"%04d" % i for i in range(800)]


async def test_read_returns_stored_frames_byte_for_byte(open_log):
    """A fetch returns the producer's frames, only the base offset and leader epoch patched."""
    plog = await open_log()
    bodies = [batch(2), batch(1), batch(4)]
    for body in bodies:
        await plog.append(body)
    data = plog.read(0, 1 << 20)
    got = [bytes(frame) for _, frame in iter_frames(data)]
    assert [g[8:12] + g[16:] for g in got] == [b[8:12] + b[16:] for b in bodies]
    assert [read_header(g).base_offset for g in got] == [0, 2, 3]
    assert {read_header(b).leader_epoch for b in bodies} == {-1}  # the producer leaves it to the leader
    assert [read_header(g).leader_epoch for g in got] == [0, 0, 0]


async def test_read_starts_with_the_batch_holding_the_offset(open_log):
    """Reading mid-batch returns that whole batch first."""
    plog = await open_log()
    await plog.append(batch(5))
    await plog.append(batch(5))
    frames = list(iter_frames(plog.read(7, 1 << 20)))
    assert [h.base_offset for h, _ in frames] == [5]


async def test_read_max_bytes_is_a_bound_but_one_batch_always_comes(open_log):
    """max_bytes cuts at a frame boundary and never returns nothing."""
    plog = await open_log()
    for _ in range(10):
        await plog.append(batch(1))
    size = len(batch(1))
    assert len(plog.read(0, 1)) == size
    assert len(plog.read(0, 3 * size + 5)) == 3 * size


async def test_read_at_high_watermark_is_empty_and_beyond_is_out_of_range(open_log):
    """offset == HW gives b''; offset > HW or < log start raises OFFSET_OUT_OF_RANGE."""
    plog = await open_log()
    await plog.append(batch(2))
    assert plog.read(2, 100) == b""
    with pytest.raises(OffsetOutOfRange) as exc:
        plog.read(3, 100)
    assert (exc.value.offset, exc.value.log_start_offset, exc.value.high_watermark) == (3, 0, 2)
    with pytest.raises(OffsetOutOfRange):
        plog.read(-1, 100)


async def test_concurrent_appends_share_one_write(open_log):
    """Appends queued together are written with one pwritev (group commit)."""
    plog = await open_log(linger_ms=20)
    results = await asyncio.gather(*(plog.append(batch(2)) for _ in range(50)))
    assert sorted(r.base_offset for r in results) == list(range(0, 100, 2))
    assert plog.stats.batches == 50
    assert plog.stats.writes < 5
    assert len(read_all(plog)) == 100


async def test_group_commit_resolves_in_queue_order(open_log):
    """Offsets follow the order in which appends were queued."""
    plog = await open_log(linger_ms=5)
    tasks = [asyncio.ensure_future(plog.append(batch(1, value=b"%03d" % i))) for i in range(30)]
    results = await asyncio.gather(*tasks)
    assert [r.base_offset for r in results] == list(range(30))


async def test_linger_bytes_sends_a_full_group_without_waiting(open_log):
    """A group that reaches linger_bytes is written before linger_ms runs out."""
    plog = await open_log(linger_ms=60_000, linger_bytes=1)
    async with asyncio.timeout(5):
        await plog.append(batch(1))


async def test_segments_roll_and_reads_cross_them(open_log):
    """Segments roll at segment_bytes and reads continue across segment files."""
    plog = await open_log(segment_bytes=1_000, index_interval_bytes=100)
    for i in range(60):
        await plog.append(batch(2, value=b"%02d" % i))
    assert plog.segment_count >= 4
    logs = sorted(p for p in os.listdir(plog.directory) if p.endswith(".log"))
    assert len(logs) == plog.segment_count
    assert all(os.path.getsize(plog.directory / p) <= 1_000 for p in logs)
    records = read_all(plog, max_bytes=300)
    assert [r.offset for r in records] == list(range(120))
    assert [r.value[:2] for r in records[::2]] == [b"%02d" % i for i in range(60)]


async def test_a_body_larger_than_a_segment_gets_its_own(open_log):
    """A single append bigger than segment_bytes is stored whole, in a new segment."""
    plog = await open_log(segment_bytes=200)
    await plog.append(batch(1))
    big = batch(10, value=b"z" * 100)
    result = await plog.append(big)
    assert plog.segment_count == 2
    assert bytes(plog.read(result.base_offset, 10))[16:] == big[16:]


async def test_reopen_serves_the_same_records(open_log, tmp_path):
    """After stop and start every record is still there, with the same offsets."""
    plog = await open_log(segment_bytes=2_000)
    for i in range(40):
        await plog.append(batch(3, value=b"%02d" % i))
    before = read_all(plog)
    await plog.stop()
    again = await open_log(segment_bytes=2_000)
    assert again.high_watermark == 120
    assert read_all(again) == before
    result = await again.append(batch(1))
    assert result.base_offset == 120


async def test_wait_for_wakes_on_append(open_log):
    """A long-poll returns as soon as a record arrives, well before its timeout."""
    plog = await open_log()
    waiter = asyncio.ensure_future(plog.wait_for(0, 30))
    await asyncio.sleep(0)
    assert not waiter.done()
    await plog.append(batch(1))
    async with asyncio.timeout(5):
        assert await waiter is True


async def test_wait_for_times_out(open_log):
    """A long-poll with nothing arriving returns False after its timeout."""
    plog = await open_log()
    await plog.append(batch(1))
    assert await plog.wait_for(0, 0) is True
    assert await plog.wait_for(1, 0.02) is False


async def test_wait_for_returns_when_the_log_stops(open_log):
    """Stopping the log ends pending long-polls."""
    plog = await open_log()
    waiter = asyncio.ensure_future(plog.wait_for(0, 30))
    await asyncio.sleep(0)
    await plog.stop()
    async with asyncio.timeout(5):
        assert await waiter is False


async def test_one_event_watches_the_end_of_many_logs(open_log, tmp_path):
    """A follower's long-poll over many partitions: one event, set by the first write to
    any of them (not by the high watermark moving), or by a log stopping; none once unwatched."""
    logs = [PartitionLog(tmp_path / f"t-{p}", "t", p, LogConfig()) for p in range(3)]
    for plog in logs:
        await plog.start()
        plog.start_replicated(None)
    try:
        await logs[0].append(batch(2))
        written = asyncio.Event()
        for plog in logs:
            plog.watch_end(written)
        assert logs[0].advance_high_watermark(2)
        assert not written.is_set()
        await logs[2].append(batch(1))
        assert written.is_set()
        written.clear()
        for plog in logs:
            plog.unwatch_end(written)
        await logs[1].append(batch(1))
        assert not written.is_set()
        logs[1].watch_end(written)
        await logs[1].stop()
        assert written.is_set()
    finally:
        for plog in logs:
            await plog.stop()


async def test_flush_always_fsyncs_before_acknowledging(open_log):
    """Under flush=always each acknowledged write has been fsynced."""
    plog = await open_log(flush="always")
    await plog.append(batch(1))
    assert plog.stats.fsyncs == 1
    await asyncio.gather(*(plog.append(batch(1)) for _ in range(10)))
    assert plog.stats.fsyncs == plog.stats.writes


async def test_flush_interval_fsyncs_in_the_background(open_log):
    """Under flush=interval an fsync follows a write within flush_interval_ms."""
    plog = await open_log(flush="interval", flush_interval_ms=20)
    await plog.append(batch(1))
    assert plog.stats.fsyncs == 0
    await until(lambda: plog.stats.fsyncs == 1)
    await plog.append(batch(1))
    await until(lambda: plog.stats.fsyncs == 2)


async def test_flush_never_leaves_it_to_the_os_until_stop(open_log):
    """Under flush=never nothing is fsynced until stop."""
    plog = await open_log(flush="never", segment_bytes=300)
    for _ in range(10):
        await plog.append(batch(1))
    assert plog.segment_count > 1
    assert plog.stats.fsyncs == 0
    await plog.stop()
    assert plog.stats.fsyncs == 1


async def test_throttled_when_the_queue_is_full(open_log):
    """Appends beyond max_queue_bytes of pending work are refused at once."""
    plog = await open_log(max_queue_bytes=1_000, linger_ms=60_000, linger_bytes=1 << 20)
    body = batch(1, value=b"q" * 300)
    first = [asyncio.ensure_future(plog.append(body)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(Throttled) as exc:
        await plog.append(body)
    assert exc.value.retry_after > 0
    assert plog.stats.throttled == 1
    await plog.stop()
    assert [f.result().base_offset for f in first] == [0, 1]


async def test_offset_for_timestamp(open_log):
    """The first batch whose max timestamp reaches ts, across segments; None past the end."""
    plog = await open_log(segment_bytes=500, index_interval_bytes=64)
    for i in range(30):
        await plog.append(batch(2, ts=10_000 + 100 * i))
    assert plog.segment_count > 2
    assert plog.offset_for_timestamp(0) == 0
    assert plog.offset_for_timestamp(10_001) == 0
    assert plog.offset_for_timestamp(10_002) == 2
    assert plog.offset_for_timestamp(12_050) == 42
    assert plog.offset_for_timestamp(12_901) == 58
    assert plog.offset_for_timestamp(12_902) is None


async def test_writer_crash_fails_every_waiter(open_log):
    """If the writer task dies, every pending append gets the exception and none hangs."""
    plog = await open_log(linger_ms=10)
    good = batch(1)
    bogus = validate_frames(good)[0]._replace(producer_id=7, base_sequence=None)  # not comparable
    tasks = [asyncio.ensure_future(plog.append(good, [bogus]))]
    tasks += [asyncio.ensure_future(plog.append(good)) for _ in range(3)]
    async with asyncio.timeout(5):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, TypeError) for r in results), results
    with pytest.raises(Exception, match="failed"):
        await plog.append(good)


async def test_stop_writes_what_was_queued(open_log):
    """Appends queued before stop are written; after stop the log refuses more."""
    plog = await open_log(linger_ms=60_000)
    tasks = [asyncio.ensure_future(plog.append(batch(1))) for _ in range(5)]
    await asyncio.sleep(0)
    await plog.stop()
    assert [t.result().base_offset for t in tasks] == list(range(5))
    with pytest.raises(Exception, match="not open"):
        await plog.append(batch(1))


async def test_start_and_stop_are_idempotent(open_log):
    """Calling start or stop twice does no harm."""
    plog = await open_log()
    await plog.start()
    await plog.append(batch(1))
    await plog.stop()
    await plog.stop()
    assert plog.high_watermark == 1


def test_config_is_validated():
    """Bad settings fail at construction with a message naming the field."""
    with pytest.raises(ValueError, match="flush"):
        LogConfig(flush="sometimes")
    with pytest.raises(ValueError, match="segment_bytes"):
        LogConfig(segment_bytes=2**33)
    with pytest.raises(ValueError, match="retention_ms"):
        LogConfig(retention_ms=0)
