"""Hypothesis over what the Kafka listener parses: request frames of every API and version
it serves, and Kafka record batches (produced, or copied by a follower). Bad input fails
only with the errors the listener turns into a closed connection or a Kafka error code.
(The listener itself, on a real broker, is fuzzed in tests/kafka/test_protocol.py.)"""

from __future__ import annotations

import cramjam
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.broker.kafka import check_copied_frames
from shoal.broker.kafka.codec import KafkaFrameError, decode_request, read_head
from shoal.broker.kafka.listener import HANDLERS
from shoal.broker.kafka.records import as_kafka_batches, check_batches, to_shoal_frames
from shoal.client.errors import BatchTooLarge, CorruptBatch
from shoal.client.records import decode_records, encode_batch, iter_frames
from tests.fuzz.test_frames import _record

SERVED = [(key, version) for key, (low, high, _) in sorted(HANDLERS.items()) for version in range(low, high + 1)]


@settings(max_examples=200, deadline=None)
@given(api=st.sampled_from(SERVED), body=st.binary(max_size=200))
def test_a_request_of_any_served_api_and_version_parses_or_is_refused(api, body):
    key, version = api
    payload = bytes([key >> 8, key & 0xFF, 0, version]) + b"\0\0\0\1\xff\xff" + body
    try:
        assert read_head(payload)[:2] == (key, version)
        decode_request(payload, key, version)
    except KafkaFrameError:
        pass


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=12))
def test_a_short_header_is_refused(raw):
    try:
        read_head(raw)
    except KafkaFrameError:
        pass


_kafka_batch = st.builds(
    lambda records: as_kafka_batches(encode_batch(records)),
    st.lists(_record, min_size=1, max_size=5),
)


def _gzipped(batch: bytes) -> bytes:
    """The same batch with its records gzip-compressed (attributes codec 1), CRC recomputed."""
    from crc32c import crc32c

    out = bytearray(batch[:61]) + bytes(cramjam.gzip.compress(batch[61:]))
    out[8:12] = (len(out) - 12).to_bytes(4, "big")
    out[22] = (out[22] & 0xF8) | 1
    out[17:21] = crc32c(bytes(out[21:])).to_bytes(4, "big")
    return bytes(out)


_any_batch = st.one_of(_kafka_batch, _kafka_batch.map(_gzipped))


def records(body: bytes) -> list[tuple]:
    """What a reader gets (the base offset is the broker's to set: any value is fine)."""
    return [
        (r.key, r.value, r.headers, r.timestamp)
        for h, frame in iter_frames(to_shoal_frames(body))
        for r in decode_records("t", 0, h, frame, min_offset=h.base_offset)
    ]


@settings(max_examples=120, deadline=None)
@given(batch=_any_batch, data=st.data())
def test_a_damaged_kafka_batch_is_refused_or_reads_the_same(batch, data):
    """Outside the CRC are only the base offset, the length and the leader epoch."""
    damaged = bytearray(batch)
    if data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(batch) - 1))
        damaged[at] ^= data.draw(st.integers(1, 255))
    else:
        at = data.draw(st.integers(0, len(batch)))
        damaged[at:at] = data.draw(st.binary(min_size=1, max_size=40))
    for check in (check_batches, check_copied_frames):
        try:
            headers = check(bytes(damaged))
        except (CorruptBatch, BatchTooLarge):
            continue
        assert sum(h.size for h in headers) == len(damaged)
        assert records(bytes(damaged)) == records(batch)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_batches_fail_only_with_corrupt_batch(raw):
    for check in (check_batches, check_copied_frames):
        try:
            check(raw)
        except CorruptBatch:
            pass
