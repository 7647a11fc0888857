"""Decoding fetched frames: column decoding, lazy RecordBatch views, and corrupt records."""

from __future__ import annotations

import gc

import msgpack
import pytest

from shoal.client import records
from shoal.client.errors import CorruptRecordError
from shoal.client.records import (
    RecordBatch,
    build_records_python,
    decode_batch,
    decode_fetch,
    decode_records,
    encode_batch,
    frame_records,
    iter_frames,
)
from shoal.client.structs import Record

T0 = 1_700_000_000_000


@pytest.fixture(autouse=True, params=["python", "compiled"])
def build_records(request, monkeypatch):
    """Every test runs with getmany()'s lists built in Python and in C (client/_records.c)."""
    if request.param == "python":
        monkeypatch.setattr(records, "build_records", build_records_python)
    elif records._compiled_build_records is None:
        pytest.fail("client/_records.c was not built: pip install -e . needs a C compiler")
    else:
        assert records.build_records is records._compiled_build_records  # what getmany() uses
    return records.build_records


def body_of(*batches: list[tuple], start: int = 0) -> bytes:
    """Frames of ``(key, value, headers, ts)`` records, with consecutive base offsets from ``start``."""
    out = []
    for records in batches:
        out.append(encode_batch(records, base_offset=start))
        start += len(records)
    return b"".join(out)


def raw_frame(entries: list, *, base_offset: int = 0) -> bytes:
    """A frame whose records array is ``entries`` as given (valid or not)."""
    return frame_records(
        msgpack.packb(entries, use_bin_type=True),
        record_count=max(1, len(entries)) if isinstance(entries, list) else 1,
        first_timestamp=T0,
        max_timestamp=T0,
        base_offset=base_offset,
    )


BODY = body_of(
    [(b"k0", b"v0", None, T0), (None, b"v1", {"h": b"x"}, T0 + 5)],
    [(b"k2", None, None, T0 + 9), (b"k3", b"v3", {}, T0 + 1)],
    start=10,
)
EXPECTED = [
    Record("t", 3, 10, b"k0", b"v0", T0, {}),
    Record("t", 3, 11, None, b"v1", T0 + 5, {"h": b"x"}),
    Record("t", 3, 12, b"k2", None, T0 + 9, {}),
    Record("t", 3, 13, b"k3", b"v3", T0 + 1, {}),
]


def test_decode_batch_gives_every_record_and_the_next_offset():
    batch, next_offset = decode_batch("t", 3, BODY, min_offset=10)
    assert list(batch) == EXPECTED
    assert next_offset == 14
    assert all(type(r) is Record for r in batch)


def test_min_offset_skips_whole_frames_and_records_inside_a_frame():
    batch, next_offset = decode_batch("t", 3, BODY, min_offset=13)
    assert list(batch) == EXPECTED[3:]
    assert next_offset == 14
    batch, _ = decode_batch("t", 3, BODY, min_offset=11)
    assert [r.offset for r in batch] == [11, 12, 13]


def test_nothing_past_min_offset_keeps_the_offset():
    batch, next_offset = decode_batch("t", 3, BODY, min_offset=14)
    assert len(batch) == 0 and list(batch) == [] and batch.next_offset is None
    empty, offset = decode_batch("t", 3, b"", min_offset=7)
    assert (len(empty), offset) == (0, 7)


def test_decode_records_and_decode_fetch_agree_with_the_batch():
    frames = list(iter_frames(BODY))
    by_frame = [r for h, f in frames for r in decode_records("t", 3, h, f, min_offset=11)]
    assert by_frame == EXPECTED[1:]
    assert decode_fetch("t", 3, BODY, min_offset=11) == EXPECTED[1:]


def test_columns_give_fields_without_records():
    batch, _ = decode_batch("t", 3, BODY, min_offset=10)
    assert batch.offsets == [10, 11, 12, 13]
    assert batch.keys == [b"k0", None, b"k2", b"k3"]
    assert batch.values == [b"v0", b"v1", None, b"v3"]
    assert batch.timestamps == [T0, T0 + 5, T0 + 9, T0 + 1]
    assert (batch.topic, batch.partition, batch.next_offset) == ("t", 3, 14)


def test_indexing_and_slicing_are_views_over_the_same_columns():
    batch, _ = decode_batch("t", 3, BODY, min_offset=10)
    assert batch[0] == EXPECTED[0] and batch[-1] == EXPECTED[3]
    with pytest.raises(IndexError):
        batch[4]
    with pytest.raises(IndexError):
        batch[-5]
    middle = batch[1:3]
    assert isinstance(middle, RecordBatch)
    assert list(middle) == EXPECTED[1:3] and len(middle) == 2
    assert middle.values == [b"v1", None] and middle.next_offset == 13
    assert middle[-1] == EXPECTED[2]
    assert list(middle[1:]) == EXPECTED[2:3]
    assert list(batch[3:1]) == [] and len(batch[3:1]) == 0
    assert batch[::2] == [EXPECTED[0], EXPECTED[2]]
    assert EXPECTED[2] in batch and batch.index(EXPECTED[3]) == 3


def test_every_read_gets_headers_of_its_own():
    batch, _ = decode_batch("t", 3, BODY, min_offset=10)
    first = batch[1]
    first.headers["h"] = b"changed"
    batch[0].headers["new"] = b"y"
    assert batch[1].headers == {"h": b"x"}
    assert [r.headers for r in batch] == [{}, {"h": b"x"}, {}, {}]


def test_tolist_equals_list_and_leaves_the_collector_as_it_was():
    batch, _ = decode_batch("t", 3, BODY, min_offset=10)
    assert gc.isenabled()
    assert batch.tolist() == EXPECTED
    assert gc.isenabled()
    gc.disable()
    try:
        assert batch[2:].tolist() == EXPECTED[2:]
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_both_builders_give_equal_records_of_their_own(build_records):
    """Slices of every shape, tombstones, keys, headers: the same Records either way, each
    with a headers dict of its own."""
    offsets = list(range(100, 160))
    keys = [None if i % 3 else b"k%d" % i for i in range(60)]
    values = [None if i % 7 == 0 else bytes(i) for i in range(60)]
    stamps = [T0 + i for i in range(60)]
    shared = {"h": b"x"}
    headers = [shared if i % 2 else {} for i in range(60)]
    columns = (offsets, keys, values, stamps, headers)
    for start, stop in [(0, 60), (0, 0), (10, 11), (59, 60), (5, 45)]:
        got = build_records(Record, "t", 3, *columns, start, stop)
        assert got == build_records_python(Record, "t", 3, *columns, start, stop)
        assert got == [Record("t", 3, *row) for row in zip(*columns)][start:stop]
        assert all(type(r) is Record for r in got)
    got = build_records(Record, "t", 3, *columns, 0, 60)
    got[1].headers["h"] = b"changed"
    assert shared == {"h": b"x"} and got[3].headers == {"h": b"x"}


def test_compiled_records_of_atomic_fields_are_out_of_the_collectors_sight(build_records):
    """What makes getmany() cheap: records holding only str, int, bytes, None and headers of
    bytes are untracked (as CPython untracks such plain tuples); one whose headers hold a
    container stays tracked, so a cycle through it is still collected."""
    compiled = records._compiled_build_records
    plain, with_bytes, with_list = compiled(
        Record, "t", 0, [0, 1, 2], [None, b"k", b"k"], [b"v", None, b"v"], [T0] * 3,
        [{}, {"h": b"x"}, {"h": [b"x"]}], 0, 3,
    )  # fmt: skip
    assert not gc.is_tracked(plain) and not gc.is_tracked(with_bytes)
    assert gc.is_tracked(with_list)
    assert all(gc.is_tracked(r) for r in build_records_python(Record, "t", 0, [0], [None], [b"v"], [T0], [{}], 0, 1))
    batch, _ = decode_batch("t", 3, BODY, min_offset=10)
    tracked = set(map(gc.is_tracked, batch.tolist()))
    assert tracked == ({True} if build_records is build_records_python else {False})


@pytest.mark.parametrize("args, error", [
    ((Record, "t", 0, [0], [None], [b"v"], [T0], [{}], 0, 2), ValueError),    # stop past the columns
    ((Record, "t", 0, [0], [None], [b"v"], [T0], [{}], 1, 0), ValueError),    # stop before start
    ((Record, "t", 0, (0,), [None], [b"v"], [T0], [{}], 0, 1), ValueError),   # a column that is not a list
    ((Record, "t", 0, [0], [None], [b"v"], [T0], [None], 0, 1), TypeError),   # headers that are not dicts
    ((dict, "t", 0, [0], [None], [b"v"], [T0], [{}], 0, 1), TypeError),       # not a tuple type
    ((Record, "t", 0, [0], [None], [b"v"], [T0], [{}], 0), TypeError),        # an argument short
])  # fmt: skip
def test_the_compiled_builder_refuses_what_it_cannot_build(args, error):
    with pytest.raises(error):
        records._compiled_build_records(*args)


def test_large_batch_round_trip():
    records = [(None if i % 3 else b"%d" % i, b"v" * (i % 50), {"i": b"%d" % i} if i % 7 == 0 else None, T0 + i)
               for i in range(5000)]  # fmt: skip
    body = body_of(records[:2000], records[2000:], start=100)
    batch, next_offset = decode_batch("t", 0, body, min_offset=150)
    assert next_offset == 5100
    got = batch.tolist()
    assert len(got) == len(batch) == 4950
    for r, (key, value, headers, ts) in zip(got, records[50:]):
        assert (r.key, r.value, r.headers, r.timestamp) == (key, value, headers or {}, ts)
    assert [r.offset for r in got] == list(range(150, 5100))


@pytest.mark.parametrize(
    "entries, why",
    [
        ([[0, None, b"v", 7]], "headers that are not a map"),
        ([[0, None, b"v"]], "a record with three fields"),
        ([["soon", None, b"v", None]], "a timestamp delta that is not a number"),
        ([5], "a record that is not an array"),
    ],
)
def test_malformed_records_raise_corrupt_record_error(entries, why):
    with pytest.raises(CorruptRecordError):
        decode_batch("t", 0, raw_frame(entries))


@pytest.mark.parametrize("bad", [[[0, None, b"v", 7]], [7]], ids=["headers", "record"])
def test_a_corrupt_frame_is_named_by_topic_partition_and_offset(bad):
    """The error says where the bad frame is and where to seek past it; with partial, the
    records before it come first, and the bad frame's offset is the one to read next."""
    body = body_of([(None, b"a", None, T0), (None, b"b", None, T0)], start=10) + raw_frame(bad, base_offset=12) + body_of(
        [(None, b"c", None, T0)], start=13
    )
    with pytest.raises(CorruptRecordError) as info:
        decode_batch("t", 3, body, min_offset=10)
    err = info.value
    assert (err.topic, err.partition, err.offset, err.next_offset) == ("t", 3, 12, 13)
    assert str(err).startswith("t/3: batch at offset 12")
    batch, next_offset = decode_batch("t", 3, body, min_offset=11, partial=True)
    assert (batch.values, batch.offsets, batch.keys, batch.timestamps, next_offset) == ([b"b"], [11], [None], [T0], 12)
    assert [r.headers for r in batch] == [{}]
    with pytest.raises(CorruptRecordError) as info:
        decode_batch("t", 3, body[len(body_of([(None, b"a", None, T0), (None, b"b", None, T0)])) :], min_offset=12,
                     partial=True)  # fmt: skip
    assert (info.value.offset, info.value.next_offset) == (12, 13)


def test_decoding_never_switches_the_garbage_collector(monkeypatch):
    """The collector is the application's: decoding and building records leave it alone."""
    switched = []
    monkeypatch.setattr(gc, "disable", lambda: switched.append("disable"))
    monkeypatch.setattr(gc, "enable", lambda: switched.append("enable"))
    monkeypatch.setattr(gc, "freeze", lambda: switched.append("freeze"))
    batch, _ = decode_batch("t", 0, BODY)
    assert len(batch.tolist()) == len(list(batch)) > 0
    assert len(decode_fetch("t", 0, BODY)) > 0
    with pytest.raises(CorruptRecordError):
        decode_batch("t", 0, raw_frame([[0, None, b"v"]]))
    assert switched == []


def test_pausing_the_collector_is_opt_in_and_restores_it(monkeypatch):
    """pause_gc=True (AsyncConsumer(pause_gc=True)) pauses the collector per frame and per
    list, leaves it on afterwards, also after a failure, and leaves a disabled one off."""
    calls = []
    monkeypatch.setattr(gc, "disable", lambda real=gc.disable: (calls.append("disable"), real())[1])
    monkeypatch.setattr(gc, "enable", lambda real=gc.enable: (calls.append("enable"), real())[1])
    batch, _ = decode_batch("t", 0, BODY, pause_gc=True)
    frames = len(list(iter_frames(BODY)))
    assert calls == ["disable", "enable"] * frames and gc.isenabled()
    assert batch.tolist(pause_gc=True) == batch.tolist() and gc.isenabled()
    with pytest.raises(CorruptRecordError):
        decode_batch("t", 0, raw_frame([[0, None, b"v"]]), pause_gc=True)
    assert gc.isenabled()
    gc.disable()
    try:
        calls.clear()
        decode_batch("t", 0, BODY, pause_gc=True)
        assert calls == [] and not gc.isenabled()  # the application's own disable() holds
    finally:
        gc.enable()


def test_records_that_are_not_an_array_raise():
    body = frame_records(msgpack.packb(0), record_count=1, first_timestamp=T0, max_timestamp=T0)
    with pytest.raises(CorruptRecordError):
        decode_batch("t", 0, body)
