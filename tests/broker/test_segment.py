"""One segment: appends, sparse offset and time indexes, lookups, reads, the open-fd LRU."""

from __future__ import annotations

import os

import pytest

from shoal.broker.storage.segment import INDEX_ENTRY, TIME_ENTRY, OpenSegments, Segment, segment_name
from shoal.client.records import HEADER_SIZE, base_offset_bytes, encode_batch, iter_frames, read_header


def frames(count: int, *, records: int = 2, value_size: int = 40, ts0: int = 1_000) -> list[bytes]:
    return [
        encode_batch([(None, b"%05d" % i + b"x" * value_size, None, ts0 + i) for _ in range(records)])
        for i in range(count)
    ]


def append_frames(seg: Segment, bodies: list[bytes]) -> list[int]:
    """Append frames the way PartitionLog does; return their base offsets."""
    bases = []
    for body in bodies:
        h = read_header(body)
        base = seg.next_offset
        iov = [base_offset_bytes(base), memoryview(body)[8:]]
        pos = seg.write(iov, len(body))
        seg.index_batch(base, h.size, h.max_timestamp, pos)
        seg.next_offset = base + h.record_count
        bases.append(base)
    return bases


@pytest.fixture
def seg(tmp_path):
    s = Segment(tmp_path, 100, index_interval_bytes=256)
    s.create()
    yield s
    s.close()


def test_names_are_20_digit_base_offsets(tmp_path):
    """Files are named by the zero-padded base offset (the indexes exist once sealed)."""
    s = Segment(tmp_path, 42)
    s.create()
    assert os.listdir(tmp_path) == [f"{segment_name(42)}.log"]
    s.seal()
    s.close()
    assert sorted(os.listdir(tmp_path)) == [f"{segment_name(42)}.{ext}" for ext in ("index", "log", "timeindex")]
    assert segment_name(42) == "00000000000000000042"


def test_append_patches_base_offsets_and_keeps_the_body(seg):
    """The stored frame is the producer's frame with only the base offset changed."""
    bodies = frames(3)
    append_frames(seg, bodies)
    data = seg.read(0, seg.size)
    stored = list(iter_frames(data))
    assert [h.base_offset for h, _ in stored] == [100, 102, 104]
    for body, (_, frame) in zip(bodies, stored):
        assert bytes(frame[8:]) == body[8:]


def test_sparse_index_entries_every_interval(seg):
    """An index entry is added once index_interval_bytes have passed since the last one."""
    bodies = frames(40)
    append_frames(seg, bodies)
    size = len(bodies[0])
    seg.persist_indexes(force=True)
    raw = seg.index_path.read_bytes()
    entries = list(INDEX_ENTRY.iter_unpack(raw))
    per_entry = -(-256 // size)  # frames between entries
    assert len(entries) == (40 - 1) // per_entry
    for rel, pos in entries:
        assert pos % size == 0 and rel == 2 * (pos // size)


def test_time_index_holds_the_greatest_timestamp_so_far(seg):
    """Time entries rise strictly and name the batch that carries the timestamp."""
    bodies = frames(30)
    append_frames(seg, bodies)
    seg.seal()
    times = list(TIME_ENTRY.iter_unpack(seg.timeindex_path.read_bytes()))
    assert times, "time index is empty"
    assert all(a[0] < b[0] for a, b in zip(times, times[1:]))
    for ts, rel in times:
        assert ts == 1_000 + rel // 2
    assert times[-1][0] == 1_029  # sealing records the segment's newest timestamp
    assert seg.max_timestamp == 1_029


def test_locate_finds_the_batch_holding_any_offset(seg):
    """Every offset maps to the frame that holds it, including mid-batch offsets."""
    append_frames(seg, frames(50, records=3))
    for offset in range(100, 250):
        found = seg.locate(offset, seg.size)
        assert found is not None
        h = read_header(seg.read(found.position, HEADER_SIZE))
        assert h == found.header
        assert h.base_offset <= offset < h.next_offset


def test_locate_past_the_end_is_none(seg):
    """An offset beyond the readable bytes is not found."""
    append_frames(seg, frames(5))
    assert seg.locate(110, seg.size) is None


def test_read_returns_whole_frames_within_max_bytes(seg):
    """A read is cut at a frame boundary, but is never empty."""
    bodies = frames(20)
    append_frames(seg, bodies)
    size = len(bodies[0])
    found = seg.locate(104, seg.size)
    data = seg.read_from(found, 3 * size + size // 2, seg.size)
    assert len(data) == 3 * size
    assert [h.base_offset for h, _ in iter_frames(data)] == [104, 106, 108]
    one = seg.read_from(found, 1, seg.size)
    assert len(one) == size


def test_read_stops_at_the_given_end(seg):
    """Bytes past ``end`` (not yet under the high watermark) are never returned."""
    bodies = frames(10)
    append_frames(seg, bodies)
    size = len(bodies[0])
    found = seg.locate(100, 4 * size)
    assert len(seg.read_from(found, 1 << 20, 4 * size)) == 4 * size


def test_offset_for_timestamp_scans_from_the_time_index(seg):
    """The first batch whose max timestamp reaches ts is found."""
    append_frames(seg, frames(60))
    for i in (0, 1, 17, 59):
        assert seg.offset_for_timestamp(1_000 + i, seg.size) == 100 + 2 * i
    assert seg.offset_for_timestamp(5_000, seg.size) is None


def test_sealed_segment_reopens_from_its_index_files(seg, tmp_path):
    """A sealed segment opened on demand finds the same frames through its files."""
    append_frames(seg, frames(40))
    seg.seal()
    seg.close()
    again = Segment(tmp_path, 100, size=os.path.getsize(seg.log_path), index_interval_bytes=256)
    again.open_sealed()
    try:
        assert again.locate(151, again.size).header.base_offset == 150
        assert again.max_timestamp == 1_039
    finally:
        again.close()


def test_write_failure_truncates_back(seg):
    """A write that fails part-way leaves the file as it was."""
    append_frames(seg, frames(2))
    before = seg.size
    fd = seg.fd  # swap in a read-only descriptor: pwritev fails with EBADF
    seg.fd = os.open(seg.log_path, os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            seg.write([b"y" * 10], 10)
    finally:
        os.close(seg.fd)
        seg.fd = fd
    assert seg.size == before == os.path.getsize(seg.log_path)


def test_lru_keeps_a_bounded_number_of_segments_open(tmp_path):
    """Acquiring more sealed segments than the capacity closes the least recently used."""
    segs = []
    for base in (0, 10, 20, 30):
        s = Segment(tmp_path, base, index_interval_bytes=256)
        s.create()
        append_frames(s, frames(5, records=2))
        s.seal()
        s.close()
        segs.append(Segment(tmp_path, base, size=os.path.getsize(s.log_path), index_interval_bytes=256))
    lru = OpenSegments(capacity=2)
    for s in segs:
        lru.acquire(s)
    assert len(lru) == 2
    assert [s.is_open for s in segs] == [False, False, True, True]
    lru.acquire(segs[2])
    lru.acquire(segs[0])
    assert [s.is_open for s in segs] == [True, False, True, False]
    for s in segs:
        lru.discard(s)
    assert not any(s.is_open for s in segs)
