"""RecordAccumulator: batching per partition, size bounds, linger, retries at the head, futures."""

from __future__ import annotations

import asyncio
import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.client.accumulator import BATCH_OVERHEAD, RecordAccumulator, RecordsFuture, record_size
from shoal.client.records import decode_records, read_header, validate_frames
from shoal.client.structs import RecordMetadata

TP = ("t", 0)


class Wakeups:
    """Counts sender wake-ups and lets a test wait for the next one."""

    def __init__(self):
        self.count = 0
        self.event = asyncio.Event()

    def __call__(self):
        self.count += 1
        self.event.set()


def make(max_batch_bytes=1 << 20, linger_ms=60_000):
    wake = Wakeups()
    return RecordAccumulator(max_batch_bytes=max_batch_bytes, linger_ms=linger_ms, wakeup=wake), wake


def add(acc, tp, value, key=None, headers=None, ts=None):
    return acc.append(tp, key, value, headers, ts, record_size(key, value, headers))


def decoded(batch):
    frame = batch.encode(7, 0)
    (header,) = validate_frames(frame)
    return header, decode_records(batch.tp.topic, batch.tp.partition, header, frame)


async def test_records_of_a_partition_share_one_batch_in_order():
    acc, _ = make()
    futs = [add(acc, TP, b"v%d" % i, key=b"k") for i in range(5)]
    add(acc, ("t", 1), b"other")
    assert len(acc.queues[TP]) == 1 and len(acc.queues[("t", 1)]) == 1
    (batch,) = acc.queues[TP]
    header, records = decoded(batch)
    assert header.record_count == 5 and header.producer_id == 7
    assert [r.value for r in records] == [b"v%d" % i for i in range(5)]
    acc.complete(batch, 100)
    assert await asyncio.gather(*futs) == [RecordMetadata("t", 0, 100 + i) for i in range(5)]


async def test_a_batch_closes_before_it_would_exceed_max_batch_bytes():
    acc, wake = make(max_batch_bytes=1000)
    for _ in range(30):
        add(acc, TP, b"x" * 100, key=b"key")
    batches = list(acc.queues[TP])
    assert len(batches) > 1
    assert wake.count >= 1  # a full batch need not wait for the linger
    for batch in batches:
        assert len(batch.encode()) <= 1000
    assert sum(b.count for b in batches) == 30


async def test_has_room_says_whether_a_record_joins_the_open_batch():
    acc, _ = make(max_batch_bytes=BATCH_OVERHEAD + 3 * record_size(None, b"x" * 10, None))
    size = record_size(None, b"x" * 10, None)
    assert not acc.has_room(TP, size)
    add(acc, TP, b"x" * 10)
    add(acc, TP, b"x" * 10)
    assert acc.has_room(TP, size)
    add(acc, TP, b"x" * 10)
    assert not acc.has_room(TP, size)


async def test_ready_waits_out_the_linger_with_one_timer():
    acc, wake = make(linger_ms=30)
    loop = asyncio.get_running_loop()
    add(acc, TP, b"a")
    add(acc, ("t", 1), b"b")
    assert acc.ready(loop.time()) == []
    await asyncio.wait_for(wake.event.wait(), 5)
    assert wake.count == 1  # one wake-up for both partitions' batches
    assert {b.tp.partition for b in acc.ready(loop.time())} == {0, 1}


async def test_flushing_turns_the_linger_off():
    acc, _ = make(linger_ms=60_000)
    add(acc, TP, b"a")
    now = asyncio.get_running_loop().time()
    assert acc.ready(now) == []
    acc.flushing += 1
    assert len(acc.ready(now)) == 1


async def test_one_batch_per_partition_in_flight_and_retries_go_back_to_the_head():
    acc, _ = make(max_batch_bytes=BATCH_OVERHEAD + 2 * record_size(None, b"r0", None))
    loop = asyncio.get_running_loop()
    futs = [add(acc, TP, b"r%d" % i) for i in range(6)]  # three batches of two
    first = acc.ready(loop.time())[0]
    acc.pop(first)
    frame = first.encode(1, 0)
    assert acc.ready(loop.time()) == []  # muted while its batch is in flight
    first.retry_at = loop.time() + 60
    acc.requeue(first)
    acc.unmute(first.tp)
    assert acc.ready(loop.time()) == []  # the head waits for its backoff; nothing overtakes it
    (again,) = acc.ready(loop.time() + 61)
    assert again is first and again.encode(2, 99) is frame  # same bytes, same sequence
    acc.pop(again)
    acc.complete(again, 0)
    acc.unmute(again.tp)
    second = acc.ready(loop.time())[0]
    assert [r.value for r in decoded(second)[1]] == [b"r2", b"r3"]
    assert futs[1].result() == RecordMetadata("t", 0, 1)
    assert not futs[2].done()


async def test_failing_a_batch_fails_its_records_and_frees_memory():
    acc, _ = make()
    futs = [add(acc, TP, b"v" * 50) for _ in range(3)]
    assert acc.buffered == 3 * record_size(None, b"v" * 50, None)
    (batch,) = acc.queues[TP]
    acc.pop(batch)
    acc.fail(batch, ValueError("boom"))
    assert acc.buffered == 0 and not acc.incomplete
    for fut in futs:
        assert isinstance(fut.exception(), ValueError)
        with pytest.raises(ValueError, match="boom"):
            await fut


async def test_record_future_callbacks_and_results():
    acc, _ = make()
    fut = add(acc, TP, b"a")
    seen = []
    fut.add_done_callback(seen.append)
    assert not fut.done()
    with pytest.raises(asyncio.InvalidStateError):
        fut.result()
    acc.complete(acc.queues[TP][0], 41)
    await asyncio.sleep(0)  # callbacks run on the next loop iteration
    assert seen == [fut] and fut.result() == RecordMetadata("t", 0, 41)


async def test_an_unknown_offset_reads_as_minus_one():
    """A batch the broker knew as a duplicate but could not place (DUPLICATE_SEQUENCE)."""
    acc, _ = make()
    futs = [add(acc, TP, b"a"), add(acc, TP, b"b")]
    acc.complete(acc.queues[TP][0], -1)
    assert [f.result().offset for f in futs] == [-1, -1]


async def test_timestamps_headers_and_tombstones_survive_encoding():
    acc, _ = make()
    add(acc, TP, b"first", ts=1_700_000_000_500)
    add(acc, TP, None, key=b"gone", ts=1_700_000_000_000)  # earlier than the first: negative delta
    add(acc, TP, b"h", headers={"trace": b"abc", "n": b""}, ts=1_700_000_000_900)
    header, records = decoded(acc.queues[TP][0])
    assert header.first_timestamp == 1_700_000_000_500 and header.max_timestamp == 1_700_000_000_900
    assert [r.timestamp for r in records] == [1_700_000_000_500, 1_700_000_000_000, 1_700_000_000_900]
    assert records[1].key == b"gone" and records[1].value is None
    assert records[2].headers == {"trace": b"abc", "n": b""}


async def test_default_timestamps_are_now():
    acc, _ = make()
    import time

    before = time.time_ns() // 1_000_000
    add(acc, TP, b"a")
    _, (record,) = decoded(acc.queues[TP][0])
    assert before <= record.timestamp <= time.time_ns() // 1_000_000


async def test_a_batch_stops_being_open_when_full_sent_or_aborted():
    """send()'s fast path appends to a batch only while ``open``: never behind a newer one."""
    acc, _ = make(max_batch_bytes=BATCH_OVERHEAD + 2 * record_size(None, b"x", None))
    first = add(acc, TP, b"x").batch
    add(acc, TP, b"x")
    assert first.open
    second = add(acc, TP, b"x").batch  # the first is full: a new one takes over
    assert second is not first and not first.open and second.open
    acc.pop(first)
    assert second.open
    acc.pop(second)
    assert not second.open and not acc.has_room(TP, 1)
    third = add(acc, ("t", 1), b"x").batch
    acc.abort(ValueError("closed"))
    assert not third.open


def ends_of(values, keys=None):
    sizes = [record_size(None if keys is None else keys[i], v, None) for i, v in enumerate(values)]
    return [sum(sizes[: i + 1]) for i in range(len(sizes))]


def extend_all(acc, values, ts):
    """Queue every value of TP the way send_batch() does: one extend() per batch it fills."""
    ends = ends_of(values)
    runs, at = [], 0
    while at < len(values):
        runs.append(acc.extend(TP, None, values, at, ends, ts))
        at += runs[-1][2]
    return runs


async def test_extend_fills_the_open_batch_then_starts_new_ones():
    size = record_size(None, b"v00", None)
    acc, wake = make(max_batch_bytes=BATCH_OVERHEAD + 4 * size)
    add(acc, TP, b"old")
    values = [b"v%02d" % i for i in range(10)]
    runs = extend_all(acc, values, 1_700_000_000_000)
    assert [(first, count) for _, first, count in runs] == [(1, 3), (0, 4), (0, 3)]
    batches = list(acc.queues[TP])
    assert [b for b, _, _ in runs] == batches and wake.count >= 1
    assert acc.buffered == record_size(None, b"old", None) + ends_of(values)[-1]
    got = [r.value for b in batches for r in decoded(b)[1]]
    assert got == [b"old", *values]
    assert all(len(b.encode()) <= b.size <= acc.max_batch_bytes for b in batches)


async def test_queueing_never_switches_the_garbage_collector(monkeypatch):
    """The collector is the application's: append() and extend() (send_batch) leave it alone."""
    switched = []
    monkeypatch.setattr(gc, "disable", lambda: switched.append("disable"))
    monkeypatch.setattr(gc, "enable", lambda: switched.append("enable"))
    acc, _ = make()
    add(acc, TP, b"one")
    extend_all(acc, [b"v"] * 100, 1_700_000_000_000)
    assert switched == [] and sum(b.count for b in acc.queues[TP]) == 101


async def test_extend_with_keys_and_timestamp():
    acc, _ = make()
    values, keys = [b"a", None, b"c"], [b"k1", b"k2", None]
    batch, first, count = acc.extend(TP, keys, values, 0, ends_of(values, keys), 1_700_000_000_123)
    _, records = decoded(batch)
    assert (first, count) == (0, 3)
    assert [(r.key, r.value, r.timestamp) for r in records] == [
        (b"k1", b"a", 1_700_000_000_123), (b"k2", None, 1_700_000_000_123), (None, b"c", 1_700_000_000_123),
    ]  # fmt: skip


async def test_single_and_bulk_records_keep_their_order_in_one_batch():
    acc, _ = make()
    add(acc, TP, b"a")
    values = [b"b", b"c"]
    acc.extend(TP, None, values, 0, ends_of(values), 1_700_000_000_000)
    add(acc, TP, b"d", key=b"k")
    acc.extend(TP, None, values, 1, ends_of(values), 1_700_000_000_000)
    (batch,) = acc.queues[TP]
    header, records = decoded(batch)
    assert header.record_count == batch.count == 5
    assert [(r.key, r.value) for r in records] == [(None, b"a"), (None, b"b"), (None, b"c"), (b"k", b"d"), (None, b"c")]


async def test_a_record_that_cannot_be_encoded_fails_its_whole_batch():
    """msgpack drops what a packer held when a pack fails: the batch must not go out short."""
    acc, wake = make()
    first = add(acc, TP, b"fine")
    with pytest.raises(UnicodeEncodeError):
        acc.append(TP, None, b"v", {"\ud800": b""}, None, 100)
    batch = first.batch
    assert not batch.open and wake.count >= 1
    with pytest.raises(UnicodeEncodeError):
        batch.encode()
    assert add(acc, TP, b"next").batch is not batch


async def test_records_future_gives_metadata_in_order_across_batches():
    size = record_size(None, b"v0", None)
    acc, _ = make(max_batch_bytes=BATCH_OVERHEAD + 2 * size)
    values = [b"v%d" % i for i in range(5)]
    runs = extend_all(acc, values, 0)
    fut = RecordsFuture(runs, asyncio.get_running_loop())
    seen = []
    fut.add_done_callback(seen.append)
    assert len(fut) == 5 and not fut.done()
    with pytest.raises(asyncio.InvalidStateError):
        fut.result()
    b0, b1, b2 = acc.queues[TP]
    acc.complete(b1, 10)
    acc.complete(b0, 5)
    await asyncio.sleep(0)
    assert not fut.done()
    acc.complete(b2, 40)
    assert await fut == [RecordMetadata("t", 0, o) for o in (5, 6, 10, 11, 40)]
    assert seen == [fut] and fut.exception() is None


async def test_records_future_raises_the_first_failure_and_wait_does_not():
    acc, _ = make(max_batch_bytes=BATCH_OVERHEAD + record_size(None, b"v0", None))
    values = [b"v0", b"v1"]
    ends = ends_of(values)
    runs = [acc.extend(TP, None, values, 0, ends, 0), acc.extend(TP, None, values, 1, ends, 0)]
    fut = RecordsFuture(runs, asyncio.get_running_loop())
    b0, b1 = acc.queues[TP]
    acc.complete(b0, -1)
    acc.fail(b1, ValueError("boom"))
    await fut.wait()
    assert isinstance(fut.exception(), ValueError)
    with pytest.raises(ValueError, match="boom"):
        await fut


async def test_an_empty_records_future_is_done():
    fut = RecordsFuture([], asyncio.get_running_loop())
    assert fut.done() and await fut == [] and len(fut) == 0


_blob = st.one_of(st.none(), st.integers(0, 70_000).map(lambda n: b"\xab" * n))
_headers = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=40), st.integers(0, 300).map(lambda n: b"h" * n), min_size=1, max_size=4),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(_blob, _blob, _headers, st.integers(-(2**40), 2**40)), min_size=1, max_size=8))
def test_record_size_is_an_upper_bound_of_the_encoded_size(records):
    """Sizes decide when a batch is full; the real frame must never be larger."""

    async def body():
        acc, _ = make(max_batch_bytes=1 << 30)
        base = 1_700_000_000_000
        for key, value, headers, delta in records:
            acc.append(TP, key, value, headers, base + delta, record_size(key, value, headers))
        (batch,) = acc.queues[TP]
        frame = batch.encode()
        assert len(frame) <= batch.size
        assert read_header(frame).record_count == len(records)

    asyncio.run(body())
