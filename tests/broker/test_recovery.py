"""Start-up recovery: torn, zero-filled and corrupt tails are cut; indexes are rebuilt."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal.broker.storage import LogConfig, PartitionLog
from shoal.broker.storage.checkpoint import CLEAN_SHUTDOWN
from shoal.client.errors import OffsetOutOfRange
from shoal.client.records import decode_fetch, encode_batch, iter_frames

ACTIVE = "00000000000000000000.log"


def batch(i: int, n: int = 2, size: int = 30) -> bytes:
    return encode_batch([(b"%d" % i, b"%d-%d-" % (i, j) + b"x" * size, None, 1_000 + i) for j in range(n)])


def read_all(plog: PartitionLog) -> list:
    out = []
    offset = plog.log_start_offset
    while offset < plog.high_watermark:
        records = decode_fetch("t", 0, plog.read(offset, 1 << 16), min_offset=offset)
        assert records
        out.extend(records)
        offset = out[-1].offset + 1
    return out


async def write_log(directory: Path, bodies: list[bytes], *, clean: bool = False, **config) -> list:
    """Append ``bodies``, stop, and unless ``clean`` forget the clean shutdown (as a crash after fsync would)."""
    plog = PartitionLog(directory, "t", 0, LogConfig(**config))
    await plog.start()
    for body in bodies:
        await plog.append(body)
    records = read_all(plog)
    await plog.stop()
    if not clean:
        (directory / CLEAN_SHUTDOWN).unlink()
    return records


async def reopen(directory: Path, **config) -> tuple[PartitionLog, list]:
    plog = PartitionLog(directory, "t", 0, LogConfig(**config))
    await plog.start()
    return plog, read_all(plog)


def frame_sizes(path: Path) -> list[int]:
    return [h.size for h, _ in iter_frames(path.read_bytes(), check_crc=False)]


async def test_torn_last_frame_is_cut(tmp_path, caplog):
    """A frame cut short by a crash is removed with a WARNING naming file, offset and bytes."""
    d = tmp_path / "t-0"
    records = await write_log(d, [batch(i) for i in range(10)])
    size = os.path.getsize(d / ACTIVE)
    last = frame_sizes(d / ACTIVE)[-1]
    os.truncate(d / ACTIVE, size - 7)
    with caplog.at_level(logging.WARNING):
        plog, got = await reopen(d)
    assert got == records[:-2]
    assert plog.high_watermark == 18
    assert os.path.getsize(d / ACTIVE) == size - last
    message = "\n".join(r.getMessage() for r in caplog.records)
    assert ACTIVE in message and "offset 18" in message and f"{last - 7} bytes" in message
    assert (await plog.append(batch(99))).base_offset == 18
    await plog.stop()


async def test_zero_filled_tail_is_cut(tmp_path):
    """Zeros after the last frame (a file extended but never written) are removed."""
    d = tmp_path / "t-0"
    records = await write_log(d, [batch(i) for i in range(5)])
    size = os.path.getsize(d / ACTIVE)
    with open(d / ACTIVE, "ab") as f:
        f.write(b"\0" * 4096)
    plog, got = await reopen(d)
    assert got == records
    assert os.path.getsize(d / ACTIVE) == size
    await plog.stop()


async def test_flipped_byte_in_the_last_frame_drops_it(tmp_path):
    """A last frame failing its CRC is not served."""
    d = tmp_path / "t-0"
    records = await write_log(d, [batch(i) for i in range(6)])
    data = bytearray((d / ACTIVE).read_bytes())
    data[-5] ^= 0x40
    (d / ACTIVE).write_bytes(bytes(data))
    plog, got = await reopen(d)
    assert got == records[:-2]
    await plog.stop()


async def test_corrupt_frame_after_the_last_index_entry_cuts_the_rest(tmp_path):
    """The tail from the last good index entry on is CRC-checked frame by frame."""
    d = tmp_path / "t-0"
    records = await write_log(d, [batch(i) for i in range(40)], index_interval_bytes=500)
    sizes = frame_sizes(d / ACTIVE)
    data = bytearray((d / ACTIVE).read_bytes())
    pos = sum(sizes[:-3]) + 60  # inside the third-last frame
    data[pos] ^= 1
    (d / ACTIVE).write_bytes(bytes(data))
    plog, got = await reopen(d, index_interval_bytes=500)
    assert got == records[: 2 * (len(sizes) - 3)]
    await plog.stop()


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
async def test_sealed_segment_index_is_rebuilt(tmp_path, damage, caplog):
    """A sealed segment whose index is missing or does not fit the log is rebuilt on open."""
    d = tmp_path / "t-0"
    records = await write_log(
        d, [batch(i) for i in range(60)], clean=True, segment_bytes=3_000, index_interval_bytes=200
    )
    index = d / "00000000000000000000.index"
    good = index.read_bytes()
    assert len(good) >= 16
    if damage == "missing":
        index.unlink()
    elif damage == "truncated":
        index.write_bytes(good[:-3])
    else:
        index.write_bytes(good[:-8] + b"\x00\x00\x00\x07\x00\x00\x00\x09")  # points mid-frame
    with caplog.at_level(logging.WARNING):
        plog, got = await reopen(d, segment_bytes=3_000, index_interval_bytes=200)
    assert got == records
    assert index.read_bytes() == good
    assert "rebuilding the indexes" in caplog.text
    await plog.stop()


@pytest.mark.parametrize("damage", ["missing", "garbage"])
async def test_active_segment_index_is_rebuilt(tmp_path, damage):
    """The active segment's index is derived data: recovery rewrites it."""
    d = tmp_path / "t-0"
    records = await write_log(d, [batch(i) for i in range(40)], index_interval_bytes=200)
    index = d / "00000000000000000000.index"
    good = index.read_bytes()
    if damage == "missing":
        index.unlink()
    else:
        index.write_bytes(b"\xff" * len(good))
    plog, got = await reopen(d, index_interval_bytes=200)
    assert got == records
    assert index.read_bytes() == good
    await plog.stop()


async def test_clean_shutdown_skips_the_scan_but_not_a_changed_file(tmp_path, caplog):
    """The clean-shutdown record is trusted only if the log still has the size it recorded."""
    d = tmp_path / "t-0"
    plog = PartitionLog(d, "t", 0, LogConfig())
    await plog.start()
    for i in range(5):
        await plog.append(batch(i))
    await plog.stop()
    assert (d / CLEAN_SHUTDOWN).exists()
    with open(d / ACTIVE, "ab") as f:
        f.write(b"\x01" * 100)
    with caplog.at_level(logging.WARNING):
        plog, got = await reopen(d)
    assert len(got) == 10
    assert not (d / CLEAN_SHUTDOWN).exists()  # consumed at start: a later crash must recover
    assert "100 bytes" in caplog.text
    await plog.stop()


bodies_strategy = st.lists(
    st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=200)), min_size=1, max_size=8),
    min_size=1,
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=bodies_strategy, crash=st.booleans())
async def test_round_trip_after_reopen(batches, crash):
    """Random batches appended, the log reopened (cleanly or not), read back identical."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "t-0"
        config = {"segment_bytes": 700, "index_interval_bytes": 150}
        plog = PartitionLog(d, "t", 0, LogConfig(**config))
        await plog.start()
        for i, records in enumerate(batches):
            await plog.append(encode_batch([(k, v, None, 1_000 + i) for k, v in records]))
        await plog.stop()
        if crash:
            (d / CLEAN_SHUTDOWN).unlink()
        again, got = await reopen(d, **config)
        await again.stop()
    expected = [(k, v, 1_000 + i) for i, records in enumerate(batches) for k, v in records]
    assert [(r.key, r.value, r.timestamp) for r in got] == expected
    assert [r.offset for r in got] == list(range(len(expected)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(1, 5), min_size=1, max_size=20), cut=st.floats(0, 1, exclude_max=True))
async def test_torn_tail_at_any_byte(counts, cut):
    """Cut the file at a random byte: recovery keeps exactly the whole frames before the cut."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "t-0"
        await write_log(d, [batch(i, n) for i, n in enumerate(counts)], index_interval_bytes=100)
        sizes = frame_sizes(d / ACTIVE)
        at = int(cut * sum(sizes))
        os.truncate(d / ACTIVE, at)
        whole = 0
        while whole < len(sizes) and sum(sizes[: whole + 1]) <= at:
            whole += 1
        plog, got = await reopen(d, index_interval_bytes=100)
        await plog.stop()
    assert plog.high_watermark == sum(counts[:whole])
    assert [r.key for r in got] == [b"%d" % i for i, n in enumerate(counts[:whole]) for _ in range(n)]


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from shoal.broker.storage import LogConfig, PartitionLog
    from shoal.client.records import encode_batch

    async def main():
        plog = PartitionLog(Path(sys.argv[1]), "t", 0, LogConfig(flush="never", segment_bytes=20_000))
        await plog.start()
        i = 0
        while True:
            bodies = [encode_batch([(b"%d" % (i + j), b"v" * 50, None, 1)]) for j in range(20)]
            results = await asyncio.gather(*(plog.append(b) for b in bodies))
            i += 20
            print(max(r.last_offset for r in results), flush=True)

    asyncio.run(main())
    """
)


async def test_kill_9_loses_no_acknowledged_record(tmp_path):
    """A writer process killed with SIGKILL: every acknowledged record is served after recovery."""
    d = tmp_path / "t-0"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(d), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    acked = -1
    try:
        async with asyncio.timeout(30):
            while acked < 3_000:
                line = await proc.stdout.readline()
                assert line, (await proc.stderr.read()).decode()
                acked = int(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    plog, got = await reopen(d, segment_bytes=20_000)
    await plog.stop()
    assert plog.high_watermark > acked
    assert [r.offset for r in got] == list(range(plog.high_watermark))
    assert [r.key for r in got] == [b"%d" % i for i in range(plog.high_watermark)]


@pytest.mark.parametrize("recovery_point", ["start", "end", "same-boot"])
async def test_segments_above_the_recovery_point_are_checked(tmp_path, caplog, recovery_point):
    """After a machine crash every segment above the recovery point is CRC-checked, sealed ones
    too: a bad frame cuts its segment and deletes the later ones. Below the point (fsynced)
    nothing is; after a crash of the process alone (same boot) only the active segment is."""
    d = tmp_path / "t-0"
    config = {"segment_bytes": 600}
    records = await write_log(d, [batch(i) for i in range(20)], **config)
    logs = sorted(d.glob("*.log"))
    assert len(logs) >= 4
    sizes = frame_sizes(logs[1])
    data = bytearray(logs[1].read_bytes())
    data[sizes[0] + 40] ^= 1  # inside the second frame of the second segment
    logs[1].write_bytes(bytes(data))
    point = len(records) if recovery_point == "end" else 0
    with caplog.at_level(logging.WARNING):
        plog = PartitionLog(d, "t", 0, LogConfig(**config), recovery_point=point, same_boot=recovery_point == "same-boot")
        await plog.start()
    if recovery_point == "start":
        first_of_segment = int(logs[1].stem)
        assert plog.high_watermark == first_of_segment + 2
        assert read_all(plog) == records[: first_of_segment + 2]
        assert sorted(d.glob("*.log")) == logs[:2]
        assert "deleting the" in caplog.text
    else:  # trusted as fsynced: start-up does not read it (a reader's CRC check still would)
        assert plog.high_watermark == len(records) and sorted(d.glob("*.log")) == logs
        assert "recovery cut" not in caplog.text
    assert plog.recovery_point == min(point, plog.high_watermark)  # recovery fsyncs nothing itself
    await plog.flush()
    assert plog.recovery_point == plog.high_watermark
    assert (await plog.append(batch(99))).base_offset == plog.high_watermark - 2
    await plog.stop()


def idempotent(pid: int, seq: int, n: int = 2) -> bytes:
    return encode_batch([(None, b"%d-%d" % (seq, j) + b"x" * 60, None, 1_000) for j in range(n)],
                        producer_id=pid, base_sequence=seq)


async def test_truncate_to_cuts_the_batch_holding_the_offset_and_everything_after(tmp_path):
    """truncate_to(offset) ends the log at the base of the batch holding ``offset``, deletes later
    segments and snapshots, rebuilds the producer table, and survives a crash."""
    d = tmp_path / "t-0"
    plog = PartitionLog(d, "t", 0, LogConfig(segment_bytes=500))
    await plog.start()
    for seq in range(0, 40, 2):
        await plog.append(idempotent(7, seq))
    assert plog.segment_count >= 4
    before = read_all(plog)
    with pytest.raises(OffsetOutOfRange):
        await plog.truncate_to(-1)
    assert await plog.truncate_to(plog.high_watermark + 5) == 40
    end = await plog.truncate_to(13)  # inside the batch [12, 13]
    assert end == 12 and plog.high_watermark == 12
    assert read_all(plog) == before[:12]
    assert max(int(p.stem) for p in d.glob("*.log")) <= 12
    assert all(int(p.stem) <= 12 for p in d.glob("*.snapshot"))
    assert (await plog.append(idempotent(7, 10))).duplicate  # still kept: below the cut
    assert (await plog.append(idempotent(7, 12))) == (12, 13, False)  # truncated: written again
    await plog.stop()
    (d / CLEAN_SHUTDOWN).unlink()
    again, got = await reopen(d, segment_bytes=500)
    assert [r.value for r in got] == [r.value for r in before[:14]]
    assert (await again.append(idempotent(7, 12))).duplicate
    await again.stop()
