"""Hypothesis over the records inside a frame: whatever ``validate_frames`` accepts (CRC
right, records anything msgpack can hold), a consumer decodes, record for record."""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.client.errors import CorruptBatch
from shoal.client.records import decode_fetch, frame_records, validate_frames

_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
    st.text(max_size=8), st.binary(max_size=8),
)
_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=4), st.binary(max_size=4)), inner, max_size=3),
    ),
    max_leaves=12,
)
_record = st.one_of(
    _value,  # anything at all
    st.tuples(  # or close to a record: each field right or wrong
        st.one_of(st.integers(-1000, 1000), _scalar),
        st.one_of(st.none(), st.binary(max_size=8), _scalar),
        st.one_of(st.none(), st.binary(max_size=8), _scalar),
        st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.binary(max_size=4), max_size=2), _value),
    ).map(list),
)


@settings(max_examples=500, deadline=None)
@given(records=st.lists(_record, min_size=1, max_size=5), count_delta=st.sampled_from([0, 0, 0, 1, -1]),
       max_ts=st.integers(999_000, 1_001_000))
def test_accepted_means_decodable(records, count_delta, max_ts):
    """A frame either fails validate_frames with CorruptBatch or decodes to record_count records."""
    count = max(1, len(records) + count_delta)
    body = msgpack.packb(records, use_bin_type=True)
    frame = frame_records(body, record_count=count, first_timestamp=1_000_000, max_timestamp=max_ts)
    try:
        validate_frames(frame)
    except CorruptBatch:
        return
    decoded = decode_fetch("t", 0, frame)
    assert len(decoded) == count
    assert max(r.timestamp for r in decoded) <= max_ts
