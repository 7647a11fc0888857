"""The listener on the wire: versions, framing, pipelining, errors, and bad input it survives."""

from __future__ import annotations

import functools
import os
import socket
import struct
import time

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kio.schema.api_versions.v0.response import ApiVersionsResponse as ApiVersionsV0
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.create_topics.v5.request import CreateTopicsRequest
from kio.schema.fetch.v11.request import FetchRequest
from kio.schema.metadata.v12.request import MetadataRequest
from kio.schema.produce.v9.request import ProduceRequest
from kio.serial import entity_reader

from shoal.broker.kafka.codec import build
from shoal.broker.kafka.listener import supported_ranges
from shoal.broker.kafka.records import as_kafka_batches
from shoal.client.records import encode_batch
from tests.harness import env_flag, http_json
from tests.kafka.wire import call, decode_response, read_frame, request_bytes

API_VERSIONS = {"client_software_name": "wire", "client_software_version": "1"}


def address(cluster, broker_id: int) -> tuple[str, int]:
    return "127.0.0.1", cluster.kafka_ports[broker_id]


def alive(cluster) -> bool:
    """Every broker still answers ApiVersions on its listener and health on HTTP."""
    for i in cluster.ports:
        body = call(address(cluster, i), ApiVersionsRequest, API_VERSIONS)
        assert body.error_code == 0
        assert http_json("GET", cluster.url(i) + "/v1/health")[0] == 200
    return True


def test_api_versions_lists_the_served_ranges(cluster):
    body = call(address(cluster, 1), ApiVersionsRequest, API_VERSIONS)
    assert [(k.api_key, k.min_version, k.max_version) for k in body.api_keys] == [
        (r["api_key"], r["min_version"], r["max_version"]) for r in supported_ranges()
    ]
    assert {0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 22} <= {k.api_key for k in body.api_keys}


def test_an_unsupported_api_versions_version_gets_the_v0_error_with_the_ranges(cluster):
    # header: api_key 18, version 99, correlation 42, client id "x"; a body Kafka cannot know
    payload = struct.pack(">hhih", 18, 99, 42, 1) + b"x" + b"\x00\x01\x02"
    with socket.create_connection(address(cluster, 1), timeout=10) as sock:
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        answer = read_frame(sock)
    assert struct.unpack_from(">i", answer)[0] == 42
    body, _ = entity_reader(ApiVersionsV0)(answer, 4)
    assert int(body.error_code) == 35  # UNSUPPORTED_VERSION
    assert [k.api_key for k in body.api_keys] == [r["api_key"] for r in supported_ranges()]


def test_pipelined_requests_are_answered_in_order_with_their_correlation_ids(cluster):
    requests = [build(ApiVersionsRequest, API_VERSIONS), build(MetadataRequest, {"topics": None}), build(ApiVersionsRequest, API_VERSIONS)]
    with socket.create_connection(address(cluster, 2), timeout=10) as sock:
        sock.sendall(b"".join(request_bytes(r, correlation_id=100 + i) for i, r in enumerate(requests)))
        answers = [decode_response(read_frame(sock), r.__api_key__, r.__version__) for r in requests]
    assert [cid for cid, _ in answers] == [100, 101, 102]
    assert {"t", "w"} <= {t.name for t in answers[1][1].topics}


def test_unknown_api_keys_oversized_and_malformed_requests_close_the_connection(cluster):
    bad = [
        struct.pack(">i", 10) + struct.pack(">hhih", 9999, 0, 1, -1),  # unknown API key
        struct.pack(">i", 2**31 - 1),  # larger than max_request_bytes
        struct.pack(">i", 12) + struct.pack(">hhih", 3, 12, 1, -1) + b"\xff\xff",  # Metadata body cut short
        struct.pack(">i", 10) + struct.pack(">hhih", 0, 1, 1, -1),  # Produce v1: not served
    ]
    for frame in bad:
        with socket.create_connection(address(cluster, 1), timeout=10) as sock:
            sock.sendall(frame)
            assert read_frame(sock) is None
    assert alive(cluster)


def test_metadata_does_not_create_unknown_topics(cluster):
    body = call(address(cluster, 1), MetadataRequest, {"topics": [{"name": "nope"}], "allow_auto_topic_creation": True})
    assert [(t.name, int(t.error_code)) for t in body.topics] == [("nope", 3)]  # UNKNOWN_TOPIC_OR_PARTITION
    assert "nope" not in http_json("GET", cluster.urls[0] + "/v1/cluster")[1]["topics"]


def fetch(cluster, broker_id: int, offset: int, *, epoch: int = -1, topic: str = "t", partition: int = 0):
    return call(address(cluster, broker_id), FetchRequest, {
        "max_wait": 0, "min_bytes": 1, "max_bytes": 1 << 20, "isolation_level": 0,
        "topics": [{"topic": topic, "partitions": [
            {"partition": partition, "current_leader_epoch": epoch, "fetch_offset": offset, "partition_max_bytes": 1 << 20},
        ]}],
    }).responses[0].partitions[0]


def test_fetch_errors_are_kafka_s(cluster):
    owner = cluster.owner("t", 0)
    other = next(i for i in cluster.ports if i != owner)
    assert int(fetch(cluster, other, 0).error_code) == 6  # NOT_LEADER_OR_FOLLOWER
    assert int(fetch(cluster, owner, 10**6).error_code) == 1  # OFFSET_OUT_OF_RANGE
    assert int(fetch(cluster, owner, 0, epoch=0).error_code) == 74  # FENCED_LEADER_EPOCH (epoch is 1)
    assert int(fetch(cluster, owner, 0, epoch=5).error_code) == 75  # UNKNOWN_LEADER_EPOCH
    assert int(fetch(cluster, owner, 0, epoch=1).error_code) == 0


def test_a_fetch_stops_at_max_bytes_after_its_first_batch(cluster):
    """KIP-74: only the first batch of a response may be larger than max_bytes; a response
    past it overflows the client's receive buffer (librdkafka's test 0082)."""
    owners: dict[int, list[int]] = {}
    for p in range(6):
        owners.setdefault(cluster.owner("fetch-budget", p), []).append(p)
    broker, parts = next((b, ps[:2]) for b, ps in owners.items() if len(ps) >= 2)  # 6 partitions on 3 brokers
    batch = as_kafka_batches(encode_batch([(None, os.urandom(300_000), None, 1)]))
    for p in parts:
        answer = call(address(cluster, broker), ProduceRequest, {
            "acks": -1, "timeout": 10_000,
            "topic_data": [{"name": "fetch-budget", "partition_data": [{"index": p, "records": batch}]}],
        }).responses[0].partition_responses[0]
        assert int(answer.error_code) == 0
    body = call(address(cluster, broker), FetchRequest, {
        "max_wait": 0, "min_bytes": 1, "max_bytes": 400_000, "isolation_level": 0,
        "topics": [{"topic": "fetch-budget", "partitions": [
            {"partition": p, "current_leader_epoch": -1, "fetch_offset": 0, "partition_max_bytes": 1 << 20} for p in parts
        ]}],
    })
    sizes = [len(part.records or b"") for part in body.responses[0].partitions]
    assert sizes[0] > 300_000 and sizes[1] == 0


def produce(cluster, broker_id: int, records: bytes, *, acks: int = -1):
    return call(address(cluster, broker_id), ProduceRequest, {
        "acks": acks, "timeout": 10_000,
        "topic_data": [{"name": "w", "partition_data": [{"index": 0, "records": records}]}],
    }).responses[0].partition_responses[0]


def test_a_batch_with_a_bad_crc_is_refused_and_nothing_is_stored(cluster):
    owner = cluster.owner("w", 0)
    batch = bytearray(as_kafka_batches(encode_batch([(b"k", b"v", None, 1000)])))
    answer = produce(cluster, owner, bytes(batch))
    assert int(answer.error_code) == 0 and answer.base_offset == 0
    batch[-1] ^= 0xFF
    assert int(produce(cluster, owner, bytes(batch)).error_code) == 2  # CORRUPT_MESSAGE
    status, body = http_json("GET", f"{cluster.url(owner)}/v1/topics/w/partitions/0/offsets")
    assert body["high_watermark"] == 1


def test_acks_0_gets_no_response_and_the_next_request_gets_its_own(cluster):
    owner = cluster.owner("w", 1)
    produce_request = build(ProduceRequest, {
        "acks": 0, "timeout": 10_000,
        "topic_data": [{"name": "w", "partition_data": [{"index": 1, "records": as_kafka_batches(encode_batch([(None, b"fire", None, 5)]))}]}],
    })
    metadata = build(MetadataRequest, {"topics": None})
    with socket.create_connection(address(cluster, owner), timeout=10) as sock:
        sock.sendall(request_bytes(produce_request, correlation_id=1) + request_bytes(metadata, correlation_id=2))
        assert decode_response(read_frame(sock), 3, 12)[0] == 2
    status, body = http_json("GET", f"{cluster.url(owner)}/v1/topics/w/partitions/1/records?offset=0")
    assert [r["value"] for r in body["records"]] == ["fire"]


def test_topics_are_not_created_over_kafka(cluster):
    body = call(address(cluster, 1), CreateTopicsRequest, {
        "topics": [{"name": "made", "num_partitions": 1, "replication_factor": 1}], "timeout": 1000,
    })
    assert [(t.name, int(t.error_code)) for t in body.topics] == [("made", 44)]  # POLICY_VIOLATION


def test_creating_an_existing_topic_answers_topic_already_exists(cluster):
    """As Kafka does: librdkafka's test suite (and clients that make sure of a topic)
    take TOPIC_ALREADY_EXISTS as success, where POLICY_VIOLATION fails them."""
    body = call(address(cluster, 2), CreateTopicsRequest, {
        "topics": [{"name": "w", "num_partitions": 3, "replication_factor": 1},
                   {"name": "new", "num_partitions": 3, "replication_factor": 1}], "timeout": 1000,
    })
    assert [(t.name, int(t.error_code)) for t in body.topics] == [("w", 36), ("new", 44)]  # TOPIC_ALREADY_EXISTS


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    api_key=st.sampled_from([0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 22, 77]),
    version=st.integers(-2, 14),
    body=st.binary(max_size=300),
    declared=st.one_of(st.none(), st.integers(-5, 400)),
)
def test_fuzzed_frames_never_take_the_listener_down(cluster, api_key, version, body, declared):
    payload = struct.pack(">hhih", api_key, version, 1, -1) + body
    size = len(payload) if declared is None else declared
    with socket.create_connection(address(cluster, 3), timeout=10) as sock:
        sock.sendall(struct.pack(">i", size) + payload)
        sock.shutdown(socket.SHUT_WR)
        while read_frame(sock) is not None:
            pass
    body = call(address(cluster, 3), ApiVersionsRequest, API_VERSIONS)
    assert body.error_code == 0


def test_connections_past_max_connections_are_closed(cluster_factory):
    small = cluster_factory(1, {"t": 1}, kafka=True, start=False)
    small.config["settings"] = {"max_connections": 2}
    small.config_path.write_text(yaml.safe_dump(small.config, sort_keys=False))
    small.start(timeout=60)
    hello = request_bytes(build(ApiVersionsRequest, API_VERSIONS))
    first, second = (socket.create_connection(address(small, 1), timeout=10) for _ in range(2))
    with first, second:
        for sock in (first, second):
            sock.sendall(hello)
            assert read_frame(sock) is not None
        with socket.create_connection(address(small, 1), timeout=10) as third:
            third.sendall(hello)
            assert read_frame(third) is None
    deadline = time.monotonic() + 10
    while True:  # the two are closed: room again once the listener has seen them go
        with socket.create_connection(address(small, 1), timeout=10) as again:
            again.sendall(hello)
            if read_frame(again) is not None:
                break
        assert time.monotonic() < deadline


@functools.cache
def _served_requests() -> dict:
    """(api key, version) -> a strategy of well-formed requests of it, with Hypothesis'
    choice of every field (kio registers its types' strategies)."""
    from kio.index import load_request_schema
    from kio.static.primitive import Records

    from shoal.broker.kafka.listener import HANDLERS

    st.register_type_strategy(Records, st.one_of(
        st.just(Records(as_kafka_batches(encode_batch([(b"k", b"v", None, 1)])))), st.binary(max_size=100).map(Records),
    ))
    return {
        (key, version): st.from_type(load_request_schema(key, version))
        for key, (low, high, _) in sorted(HANDLERS.items()) for version in range(low, high + 1)
    }


@settings(max_examples=300 if env_flag("SHOAL_SOAK") else 20, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.reuse, Phase.generate])  # a failure prints its request; shrinking one is slow
@given(data=st.data())
def test_well_formed_requests_with_any_values_never_break_the_listener(cluster, data):
    """Any well-formed request is answered (with a response that parses) or waits, and
    no handler fails: a failure would be logged with its traceback and close the connection."""
    strategies = _served_requests()
    request = data.draw(strategies[data.draw(st.sampled_from(sorted(strategies)))])
    log_path = cluster.log_path(2)
    seen = log_path.stat().st_size
    with socket.create_connection(address(cluster, 2), timeout=10) as sock:
        sock.sendall(request_bytes(request))
        sock.settimeout(0.5)  # a long-poll or a join may hold its answer back: do not wait for it
        try:
            answer = read_frame(sock)
        except TimeoutError:
            answer = None
        if answer is not None:
            decode_response(answer, request.__api_key__, request.__version__)
    with open(log_path, "rb") as log:
        log.seek(seen)
        assert b"Traceback" not in log.read()
    assert call(address(cluster, 2), ApiVersionsRequest, API_VERSIONS).error_code == 0
