"""Leader epochs: patched into each stored frame, recorded in the leader-epoch checkpoint,
cut with the log, rebuilt when missing; a follower's verbatim append; old frames refused."""

from __future__ import annotations

import struct

import pytest

from shoal.broker.storage import LogConfig, PartitionLog
from shoal.broker.storage.durable import read_record
from shoal.broker.storage.leader_epochs import FILE_NAME, UNDEFINED, LeaderEpochCache
from shoal.client.errors import CorruptBatch, InternalError
from shoal.client.records import encode_batch, iter_frames, read_header


def batch(n: int = 1, *, producer_id: int = -1, base_sequence: int = -1) -> bytes:
    return encode_batch(
        [(b"k%d" % i, b"v%d" % i, None, 1_000 + i) for i in range(n)], producer_id=producer_id, base_sequence=base_sequence
    )


def epochs_of(data: bytes) -> list[tuple[int, int]]:
    return [(h.base_offset, h.leader_epoch) for h, _ in iter_frames(data)]


async def test_each_frame_carries_the_epoch_it_was_written_in(open_log):
    """The epoch goes into the frame and into the checkpoint (on disk) before its first frame."""
    plog = await open_log()
    await plog.append(batch(2))
    plog.leader_epoch = 3
    await plog.append(batch(1))
    await plog.append(batch(2))
    assert epochs_of(plog.read(0, 1 << 20)) == [(0, 0), (2, 3), (3, 3)]
    assert plog.epochs.entries() == [(0, 0), (3, 2)]
    assert read_record(plog.directory / FILE_NAME) == [[0, 0], [3, 2]]


async def test_truncation_cuts_the_epochs_with_the_log(open_log):
    plog = await open_log()
    await plog.append(batch(2))
    plog.leader_epoch = 1
    await plog.append(batch(2))
    plog.leader_epoch = 2
    await plog.append(batch(2))
    assert await plog.truncate_to(3) == 2
    assert plog.epochs.entries() == [(0, 0)]  # epoch 1 began at 2, the new end: gone with its frames
    assert read_record(plog.directory / FILE_NAME) == [[0, 0]]
    await plog.append(batch(1))  # still epoch 2: recorded again at the new end
    assert plog.epochs.entries() == [(0, 0), (2, 2)]


async def test_a_missing_or_torn_checkpoint_is_rebuilt_from_the_frames(tmp_path):
    plog = PartitionLog(tmp_path / "t-0", "t", 0, LogConfig(segment_bytes=200))
    await plog.start()
    for epoch in (0, 0, 4, 4, 7):
        plog.leader_epoch = epoch
        await plog.append(batch(2))
    expected = plog.epochs.entries()
    assert expected == [(0, 0), (4, 4), (7, 8)] and plog.segment_count > 1
    await plog.stop()
    (tmp_path / "t-0" / FILE_NAME).unlink()
    plog = PartitionLog(tmp_path / "t-0", "t", 0, LogConfig(segment_bytes=200))
    await plog.start()
    assert plog.epochs.entries() == expected
    await plog.stop()
    (tmp_path / "t-0" / FILE_NAME).write_bytes(b"\x00\x00\x00\x09torn")
    plog = PartitionLog(tmp_path / "t-0", "t", 0, LogConfig(segment_bytes=200))
    await plog.start()
    assert plog.epochs.entries() == expected
    await plog.stop()


def test_entries_past_the_log_end_are_dropped_at_load(tmp_path):
    """An epoch recorded, then a crash before its first frame reached the disk."""
    LeaderEpochCache(tmp_path, [(0, 0), (5, 10)])._save()
    assert LeaderEpochCache.load(tmp_path, 10, ()).entries() == [(0, 0)]
    assert read_record(tmp_path / FILE_NAME) == [[0, 0]]


def test_end_offset_for_an_epoch():
    """OffsetsForLeaderEpoch: the largest epoch at or below the one asked, and where it ends."""
    cache = LeaderEpochCache("/nonexistent", [(1, 0), (3, 10), (6, 25)])
    assert cache.end_offset_for(0, 40) == (UNDEFINED, UNDEFINED)
    assert cache.end_offset_for(1, 40) == (1, 10)
    assert cache.end_offset_for(2, 40) == (1, 10)  # never led in 2: epoch 1 ended where 3 began
    assert cache.end_offset_for(3, 40) == (3, 25)
    assert cache.end_offset_for(6, 40) == (6, 40)  # the latest ends at the log end
    assert cache.end_offset_for(9, 40) == (6, 40)


async def test_a_follower_stores_the_leaders_frames_verbatim(tmp_path):
    leader = PartitionLog(tmp_path / "a", "t", 0, LogConfig())
    follower = PartitionLog(tmp_path / "b", "t", 0, LogConfig())
    await leader.start()
    await follower.start()
    try:
        await leader.append(batch(2, producer_id=9, base_sequence=0))
        leader.leader_epoch = 2
        await leader.append(batch(3, producer_id=9, base_sequence=2))
        data = leader.read(0, 1 << 20)
        assert await follower.append_replicated(data) == (0, 4, False)
        assert follower.read(0, 1 << 20) == data
        assert follower.epochs.entries() == leader.epochs.entries() == [(0, 0), (2, 2)]
        # idempotence survives a failover: the same batches per producer (the last-seen times differ)
        assert [(pid, b) for pid, _, b in follower.producers.to_list()] == [(9, [[0, 2, 0], [2, 3, 2]])]
        assert [(pid, b) for pid, _, b in leader.producers.to_list()] == [(9, [[0, 2, 0], [2, 3, 2]])]
        with pytest.raises(InternalError, match="the log ends at 5"):
            await follower.append_replicated(data)  # offsets 0.. do not continue the log
        corrupt = bytearray(leader.read(2, 1 << 20))
        corrupt[-1] ^= 1
        with pytest.raises(CorruptBatch, match="CRC"):
            await follower.append_replicated(bytes(corrupt))
        assert follower.high_watermark == 5
    finally:
        await leader.stop()
        await follower.stop()


async def test_a_segment_of_the_old_frame_format_is_refused(tmp_path):
    """Magic 1 frames (no leader epoch) stop the start with a clear message, nothing is cut."""
    d = tmp_path / "t-0"
    d.mkdir()
    old = struct.pack(">qIIBBIqqqi", 0, 60, 0, 1, 0, 1, 1000, 1000, -1, -1) + b"\x91\x94\x00\xc0\xc0\xc0"
    segment = d / ("0" * 20 + ".log")
    segment.write_bytes(old)
    plog = PartitionLog(d, "t", 0, LogConfig())
    with pytest.raises(RuntimeError, match="old format .*magic 1"):
        await plog.start()
    assert segment.read_bytes() == old
    assert read_header(encode_batch([(None, b"x", None, 1)])).magic == 3


async def test_a_follower_emptied_below_its_leaders_log_start_copies_from_there_and_reopens(tmp_path):
    """``truncate_fully_and_start_at``: every segment, snapshot and epoch goes; the log starts
    empty at the leader's log start, takes the leader's frames from there, and reopens so."""
    leader = PartitionLog(tmp_path / "a", "t", 0, LogConfig(segment_bytes=300, retention_bytes=1))
    follower = PartitionLog(tmp_path / "b", "t", 0, LogConfig())
    await leader.start()
    await follower.start()
    try:
        for i in range(12):
            leader.leader_epoch = i // 4
            await leader.append(batch(2, producer_id=9, base_sequence=2 * i))
        await follower.append_replicated(leader.read(0, 100))  # the follower has the first batch only
        await leader.enforce_retention()
        start = leader.log_start_offset
        assert start > follower.log_end_offset
        follower.start_replicated(None)
        await follower.truncate_fully_and_start_at(start)
        assert (follower.log_start_offset, follower.log_end_offset, follower.epochs.entries()) == (start, start, [])
        while follower.log_end_offset < leader.log_end_offset:
            await follower.append_replicated(leader.read(follower.log_end_offset, 1 << 20, to_log_end=True))
        follower.advance_high_watermark(leader.log_end_offset)
        assert follower.epochs.entries() == [(2, start)] and start > 16  # epoch 2 began at 16 on the leader
    finally:
        await leader.stop()
        await follower.stop()
    def stored(d):
        return b"".join(p.read_bytes() for p in sorted(d.glob("*.log")))

    assert stored(tmp_path / "b") == stored(tmp_path / "a")
    again = PartitionLog(tmp_path / "b", "t", 0, LogConfig())
    await again.start()
    try:
        assert (again.log_start_offset, again.log_end_offset) == (start, 24)
    finally:
        await again.stop()
