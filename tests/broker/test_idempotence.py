"""Idempotent produce: retried batches are recognised, sequence gaps and replays refused."""

from __future__ import annotations

import asyncio

import pytest

from shoal.broker.storage.checkpoint import CLEAN_SHUTDOWN
from shoal.client.errors import DuplicateSequence, OutOfOrderSequence
from shoal.client.records import encode_batch, now_ms as current_ms


def batch(pid: int, seq: int, n: int = 2) -> bytes:
    return encode_batch([(None, b"%d-%d" % (seq, i), None, 1_000) for i in range(n)], producer_id=pid, base_sequence=seq)


async def test_a_retried_batch_gets_its_original_offsets(open_log):
    """The same (producer id, sequence) is not written again; the first offsets come back."""
    plog = await open_log()
    first = await plog.append(batch(7, 0))
    await plog.append(batch(7, 2))
    again = await plog.append(batch(7, 0))
    assert again == (first.base_offset, first.last_offset, True)
    assert plog.high_watermark == 4
    assert plog.stats.duplicates == 1


async def test_a_sequence_gap_is_out_of_order(open_log):
    """A batch that skips ahead of last + count is refused with the expected sequence."""
    plog = await open_log()
    await plog.append(batch(7, 0, n=3))
    with pytest.raises(OutOfOrderSequence) as exc:
        await plog.append(batch(7, 4))
    assert (exc.value.producer_id, exc.value.expected) == (7, 3)
    assert plog.high_watermark == 3


async def test_a_sequence_older_than_the_kept_batches_is_a_duplicate(open_log):
    """Only the last 5 batches are kept; an older sequence is DUPLICATE_SEQUENCE."""
    plog = await open_log()
    for seq in range(0, 12, 2):
        await plog.append(batch(9, seq))
    assert (await plog.append(batch(9, 2))).duplicate  # the 5th-last is still kept
    with pytest.raises(DuplicateSequence) as exc:
        await plog.append(batch(9, 0))
    assert (exc.value.producer_id, exc.value.expected) == (9, 12)


async def test_an_unknown_producer_may_start_anywhere(open_log):
    """A producer id seen for the first time is accepted at any sequence."""
    plog = await open_log()
    assert (await plog.append(batch(3, 1_000))).base_offset == 0
    assert (await plog.append(batch(3, 1_002))).base_offset == 2


async def test_producers_without_an_id_are_not_checked(open_log):
    """producer_id -1 batches are always appended."""
    plog = await open_log()
    body = encode_batch([(None, b"x", None, 1)])
    results = [await plog.append(body) for _ in range(3)]
    assert [r.base_offset for r in results] == [0, 1, 2]
    assert not any(r.duplicate for r in results)


async def test_a_duplicate_inside_one_write_group(open_log):
    """Two appends of the same batch queued together: one write, same offsets for both."""
    plog = await open_log(linger_ms=20)
    a, b = await asyncio.gather(plog.append(batch(5, 0)), plog.append(batch(5, 0)))
    assert (a.base_offset, a.last_offset) == (b.base_offset, b.last_offset) == (0, 1)
    assert [a.duplicate, b.duplicate] == [False, True]
    assert plog.high_watermark == 2


async def test_a_bad_sequence_fails_only_its_own_append(open_log):
    """In a write group, a refused batch does not disturb the others."""
    plog = await open_log(linger_ms=20)
    await plog.append(batch(5, 0))
    results = await asyncio.gather(
        plog.append(batch(5, 2)), plog.append(batch(5, 9)), plog.append(batch(6, 0)), return_exceptions=True
    )
    assert isinstance(results[1], OutOfOrderSequence)
    assert [results[0].base_offset, results[2].base_offset] == [2, 4]


async def test_a_body_is_checked_as_a_whole(open_log):
    """If any frame of a body fails its sequence check, none of the body is written."""
    plog = await open_log()
    await plog.append(batch(5, 0))
    with pytest.raises(OutOfOrderSequence):
        await plog.append(batch(5, 2) + batch(5, 8))
    assert plog.high_watermark == 2
    assert (await plog.append(batch(5, 2) + batch(5, 4))).base_offset == 2


@pytest.mark.parametrize("clean", [True, False], ids=["clean-stop", "crash"])
async def test_producer_state_survives_a_restart(open_log, tmp_path, clean):
    """After a restart (clean or not) a retried batch is still recognised."""
    plog = await open_log()
    first = await plog.append(batch(11, 0))
    await plog.append(batch(11, 2))
    await plog.stop()
    if not clean:
        (tmp_path / "t-0" / CLEAN_SHUTDOWN).unlink()
    again = await open_log()
    assert await again.append(batch(11, 0)) == (first.base_offset, first.last_offset, True)
    with pytest.raises(OutOfOrderSequence):
        await again.append(batch(11, 7))


async def test_producers_outlive_segment_rolls_and_expire_by_time(open_log):
    """A producer idle while many segments roll is still known; it goes only after producer_expiry_ms."""
    plog = await open_log(segment_bytes=300, producer_expiry_ms=60_000)
    first = await plog.append(batch(1, 0))
    for seq in range(0, 20, 2):
        await plog.append(batch(2, seq))
    assert plog.segment_count > 2
    assert plog.producer_count == 2
    assert await plog.append(batch(1, 0)) == (first.base_offset, first.last_offset, True)
    assert plog.expire_producers(current_ms() + 59_000) == 0
    assert plog.expire_producers(current_ms() + 60_000) == 2
    assert (await plog.append(batch(1, 0))).duplicate is False  # unknown again: any sequence


@pytest.mark.parametrize("snapshot", ["kept", "torn", "missing"])
async def test_a_crash_after_rolls_keeps_producers_of_sealed_segments(open_log, tmp_path, snapshot):
    """After an unclean stop the producer table is the roll's snapshot plus the active segment
    replayed; a torn or missing snapshot falls back to replaying the sealed segments too."""
    plog = await open_log(segment_bytes=300)
    first = await plog.append(batch(1, 0))  # only in segment 0
    while plog.segment_count < 3:
        await plog.append(batch(2, plog.stats.appends * 2 - 2))
    await plog.stop()
    d = tmp_path / "t-0"
    (d / CLEAN_SHUTDOWN).unlink()
    snapshots = sorted(d.glob("*.snapshot"))
    assert [p.stem for p in snapshots] == [p.stem for p in sorted(d.glob("*.log"))[1:]]  # one per roll
    if snapshot == "torn":
        for p in snapshots:
            p.write_bytes(p.read_bytes()[:-3])
    elif snapshot == "missing":
        for p in snapshots:
            p.unlink()
    again = await open_log(segment_bytes=300)
    assert await again.append(batch(1, 0)) == (first.base_offset, first.last_offset, True)
    assert again.high_watermark == plog.high_watermark
    assert (await again.append(batch(1, 2))).base_offset == plog.high_watermark
