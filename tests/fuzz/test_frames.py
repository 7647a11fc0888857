"""Hypothesis over the batch frame format: any damage to a valid produce body is refused by
``validate_frames`` or leaves the records exactly as they were, and no input makes the
validator or the decoder fail with anything but their documented errors."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.client.errors import BatchTooLarge, CorruptBatch, CorruptRecordError
from shoal.client.records import decode_fetch, decode_records, encode_batch, iter_frames, validate_frames

_blob = st.one_of(st.none(), st.binary(max_size=64))
_record = st.tuples(
    _blob,
    _blob,
    st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.binary(max_size=16), max_size=3)),
    st.integers(0, 2**40),
)
_batch = st.builds(
    lambda records, pid, seq: encode_batch(records, producer_id=pid, base_sequence=seq),
    st.lists(_record, min_size=1, max_size=6),
    st.sampled_from([-1, 7]),
    st.sampled_from([-1, 0, 99]),
)
_body = st.lists(_batch, min_size=1, max_size=3).map(b"".join)


def records(body: bytes) -> list[tuple]:
    """What a reader gets: every record's key, value, headers and timestamp, in order
    (the base offset is the broker's to set, so any value of it is fine)."""
    return [
        (r.key, r.value, r.headers, r.timestamp)
        for h, frame in iter_frames(body)
        for r in decode_records("t", 0, h, frame, min_offset=h.base_offset)
    ]


def accepted_unchanged_or_refused(original: bytes, damaged: bytes) -> None:
    try:
        headers = validate_frames(damaged)
    except (CorruptBatch, BatchTooLarge):
        return
    assert sum(h.size for h in headers) == len(damaged)
    assert records(damaged) == records(original)


@settings(max_examples=300, deadline=None)
@given(body=_body, data=st.data())
def test_a_flipped_byte_is_refused_or_harmless(body, data):
    """Only the base offset is outside the CRC; flipping it changes offsets, not records."""
    at = data.draw(st.integers(0, len(body) - 1))
    mask = data.draw(st.integers(1, 255))
    damaged = bytearray(body)
    damaged[at] ^= mask
    accepted_unchanged_or_refused(body, bytes(damaged))


@settings(max_examples=200, deadline=None)
@given(body=_batch, data=st.data())
def test_a_truncated_frame_is_refused(body, data):
    cut = data.draw(st.integers(0, len(body) - 1))
    try:
        validate_frames(body[:cut])
    except CorruptBatch:
        return
    raise AssertionError(f"a frame cut to {cut} of {len(body)} bytes was accepted")


@settings(max_examples=200, deadline=None)
@given(body=_body, data=st.data())
def test_inserted_or_appended_bytes_are_refused(body, data):
    at = data.draw(st.integers(0, len(body)))
    junk = data.draw(st.binary(min_size=1, max_size=80))
    accepted_unchanged_or_refused(body, body[:at] + junk + body[at:])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_fail_only_with_documented_errors(raw):
    """The validator raises CorruptBatch or BatchTooLarge; the reader CorruptRecordError or nothing."""
    try:
        validate_frames(raw, max_batch_bytes=200)
    except (CorruptBatch, BatchTooLarge):
        pass
    try:
        list(iter_frames(raw))
        decode_fetch("t", 0, raw)
    except CorruptRecordError:
        pass


@settings(max_examples=100, deadline=None)
@given(body=_body)
def test_valid_bodies_round_trip(body):
    """The other half of the property: an undamaged body is accepted whole."""
    headers = validate_frames(body)
    assert sum(h.size for h in headers) == len(body)
    assert len(records(body)) == sum(h.record_count for h in headers)
