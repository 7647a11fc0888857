"""HTTP API v1 of real broker processes: the data plane, committed offsets, cluster ops."""

from __future__ import annotations

import asyncio
import io
import json
from importlib.metadata import version

import aiohttp
import msgpack
import pytest

from shoal.client.errors import ShoalError
from shoal.client.records import (
    array_header,
    encode_batch,
    frame_records,
    iter_frames,
    now_ms,
    patch_base_offset,
    read_header,
)

BATCH = "application/vnd.shoal.batch"


@pytest.fixture
def single(cluster_factory):
    return cluster_factory(1, {"t": 2, "audit": {"partitions": 1, "flush": "always"}})


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http, method, url, **kw):
    async with http.request(method, url, **kw) as resp:
        ctype = resp.content_type
        body = await resp.read()
        if ctype in ("application/json", "application/problem+json"):
            return resp.status, json.loads(body), resp.headers
        return resp.status, body, resp.headers


def records_url(cluster, topic="t", p=0, broker=1):
    return f"{cluster.url(broker)}/v1/topics/{topic}/partitions/{p}/records"


async def test_json_append_then_fetch_round_trips(single, http):
    """Records appended as JSON come back in order with their offsets, keys and headers."""
    url = records_url(single)
    body = {"records": [{"key": "k1", "value": "v1", "headers": {"h": "x"}}, {"value": "v2"}, {"value_b64": "AP8="}]}
    status, ack, _ = await call(http, "POST", url, json=body)
    assert (status, ack["base_offset"], ack["count"]) == (200, 0, 3)
    status, ack, _ = await call(http, "POST", url, json={"records": [{"value": "v4"}]})
    assert ack["base_offset"] == 3
    status, got, headers = await call(http, "GET", url, params={"offset": 1})
    assert status == 200
    assert [r["offset"] for r in got["records"]] == [1, 2, 3]
    assert got["records"][1]["value_b64"] == "AP8=" and got["records"][0]["value"] == "v2"
    assert got["high_watermark"] == 4 and headers["Shoal-High-Watermark"] == "4"
    status, got, _ = await call(http, "GET", url, params={"offset": 0})
    assert got["records"][0] == {**got["records"][0], "key": "k1", "value": "v1", "headers": {"h": "x"}}


async def test_batch_fetch_returns_stored_frames_byte_for_byte(single, http):
    """A fetch returns the frames as produced, with only the base offset patched."""
    url = records_url(single)
    frames = [encode_batch([(None, b"a" * 100, None, None)] * n) for n in (3, 5)]
    for frame in frames:
        status, _, _ = await call(http, "POST", url, data=frame, headers={"Content-Type": BATCH})
        assert status == 200
    status, body, headers = await call(http, "GET", url, params={"offset": 4}, headers={"Accept": BATCH})
    assert status == 200 and headers["Content-Type"] == BATCH
    assert body[16:] == frames[1][16:]  # the batch holding offset 4 starts at 3 (offset and epoch patched)
    assert read_header(body).base_offset == 3
    status, body, _ = await call(http, "GET", url, params={"offset": 0}, headers={"Accept": BATCH})
    assert [h.base_offset for h, _ in iter_frames(body)] == [0, 3]


async def test_long_poll_wakes_when_data_arrives(single, http):
    """A fetch at the high watermark waits and is answered by the next append."""
    url = records_url(single)
    poll = asyncio.create_task(call(http, "GET", url, params={"offset": 0, "max_wait_ms": 20000}))
    await asyncio.sleep(0)  # let the poll go out first; the append below must wake it
    status, _, _ = await call(http, "POST", url, json={"records": [{"value": "late"}]})
    assert status == 200
    status, got, _ = await asyncio.wait_for(poll, 15)
    assert [r["value"] for r in got["records"]] == ["late"]


async def test_long_poll_times_out_empty(single, http):
    status, got, _ = await call(http, "GET", records_url(single), params={"offset": 0, "max_wait_ms": 50})
    assert (status, got["records"]) == (200, [])


async def test_offsets_and_timestamp_lookup(single, http):
    url = records_url(single)
    for ts in (1000, 2000, 3000):
        await call(http, "POST", url, json={"records": [{"value": "x", "timestamp": ts}]})
    base = f"{single.url(1)}/v1/topics/t/partitions/0/offsets"
    status, got, _ = await call(http, "GET", base)
    assert got == {"log_start_offset": 0, "high_watermark": 3}
    status, got, _ = await call(http, "GET", base, params={"timestamp": 1500})
    assert got["offset"] == 1
    status, got, _ = await call(http, "GET", base, params={"timestamp": 9999})
    assert got["offset"] is None


async def test_commit_and_resume_point(single, http):
    url = records_url(single)
    await call(http, "POST", url, json={"records": [{"value": str(i)} for i in range(10)]})
    off = f"{single.url(1)}/v1/groups/g1/topics/t/partitions/0/offset"
    status, got, _ = await call(http, "GET", off)
    assert (status, got["offset"], got["high_watermark"]) == (200, None, 10)
    status, got, _ = await call(http, "PUT", off, json={"offset": 7, "metadata": "m"})
    assert status == 200
    status, got, _ = await call(http, "GET", off)
    assert (got["offset"], got["metadata"]) == (7, "m")
    status, got, _ = await call(http, "PUT", off, json={"offset": 11})
    assert (status, got["code"], got["high_watermark"]) == (416, "OFFSET_OUT_OF_RANGE", 10)
    status, got, _ = await call(http, "GET", f"{single.url(1)}/v1/groups/g1")
    assert got["partitions"] == [
        {"topic": "t", "partition": 0, "offset": 7, "metadata": "m", "high_watermark": 10, "lag": 3}
    ]
    status, got, _ = await call(http, "GET", f"{single.url(1)}/v1/groups")
    assert [g["group"] for g in got["groups"]] == ["g1"]


async def test_committed_offset_survives_kill_9(single, http):
    await call(http, "POST", records_url(single), json={"records": [{"value": "x"}] * 5})
    off = f"{single.url(1)}/v1/groups/g/topics/t/partitions/0/offset"
    await call(http, "PUT", off, json={"offset": 4})
    single.kill(1)
    single.start(1)
    status, got, _ = await call(http, "GET", off)
    assert got["offset"] == 4


BAD_INPUTS = [
    ("POST", "/v1/topics/t/partitions/0/records", {"data": b"garbage", "headers": {"Content-Type": BATCH}}, 400, "CORRUPT_BATCH"),
    ("POST", "/v1/topics/t/partitions/0/records", {"data": b"\0" * 80, "headers": {"Content-Type": BATCH}}, 400, "CORRUPT_BATCH"),
    ("POST", "/v1/topics/t/partitions/0/records", {"data": b"x", "headers": {"Content-Type": "text/plain"}}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("POST", "/v1/topics/t/partitions/0/records", {"data": b"{", "headers": {"Content-Type": "application/json"}}, 400, "INVALID_REQUEST"),
    ("POST", "/v1/topics/t/partitions/0/records", {"json": {"records": []}}, 400, "INVALID_REQUEST"),
    ("POST", "/v1/topics/t/partitions/0/records", {"json": {"records": [{"value": "x", "timestamp": "now"}]}}, 400, "INVALID_REQUEST"),
    ("POST", "/v1/topics/t/partitions/0/records", {"json": {"records": [{"value_b64": "!!"}]}}, 400, "INVALID_REQUEST"),
    ("POST", "/v1/topics/nope/partitions/0/records", {"json": {"records": [{"value": "x"}]}}, 404, "UNKNOWN_TOPIC"),
    ("POST", "/v1/topics/t/partitions/9/records", {"json": {"records": [{"value": "x"}]}}, 404, "UNKNOWN_PARTITION"),
    ("POST", "/v1/topics/t/partitions/-1/records", {"json": {"records": [{"value": "x"}]}}, 400, "INVALID_REQUEST"),
    ("POST", "/v1/topics/a..b%00/partitions/0/records", {"json": {"records": [{"value": "x"}]}}, 400, "INVALID_REQUEST"),
    ("POST", "/v1/topics/..%2F..%2Fetc/partitions/0/records", {"json": {"records": [{"value": "x"}]}}, 400, "INVALID_REQUEST"),
    ("POST", "/v1/topics/" + "x" * 250 + "/partitions/0/records", {"json": {"records": [{"value": "x"}]}}, 400, "INVALID_REQUEST"),
    ("GET", "/v1/topics/t/partitions/0/records?offset=-1", {}, 400, "INVALID_REQUEST"),
    ("GET", "/v1/topics/t/partitions/0/records?offset=99999999999999999999999", {}, 400, "INVALID_REQUEST"),
    ("GET", "/v1/topics/t/partitions/0/records?offset=5", {}, 416, "OFFSET_OUT_OF_RANGE"),
    ("GET", "/v1/topics/t/partitions/0/records?offset=abc", {}, 400, "INVALID_REQUEST"),
    ("GET", "/v1/topics/t/partitions/0/records", {"headers": {"Accept": "text/html"}}, 406, "NOT_ACCEPTABLE"),
    ("PUT", "/v1/groups/g/topics/t/partitions/0/offset", {"json": {"offset": "1"}}, 400, "INVALID_REQUEST"),
    ("PUT", "/v1/groups/g/topics/t/partitions/0/offset", {"json": {"offset": -1}}, 416, "OFFSET_OUT_OF_RANGE"),
    ("PUT", "/v1/groups/a%2Fb/topics/t/partitions/0/offset", {"json": {"offset": 0}}, 400, "INVALID_REQUEST"),
    ("PUT", "/v1/cluster", {"json": {"cluster": "test", "epoch": 0}}, 400, "INVALID_REQUEST"),
    ("GET", "/v1/nothing-here", {}, 404, "NOT_FOUND"),
    ("DELETE", "/v1/cluster", {}, 405, "METHOD_NOT_ALLOWED"),
]


@pytest.mark.parametrize("method,path,kw,status,code", BAD_INPUTS, ids=[f"{b[0]} {b[1][:50]} {b[4]}" for b in BAD_INPUTS])
async def test_bad_input_gets_problem_json_and_changes_nothing(single, http, method, path, kw, status, code):
    await call(http, "POST", records_url(single), json={"records": [{"value": "keep"}]})
    got_status, got, headers = await call(http, method, single.url(1) + path, **kw)
    assert (got_status, got["code"]) == (status, code), got
    assert headers["Content-Type"] == "application/problem+json"
    assert got["status"] == status and got["title"] and got["type"]
    assert type(ShoalError.from_problem(got)).code == code
    _, after, _ = await call(http, "GET", records_url(single), params={"offset": 0})
    assert [r["value"] for r in after["records"]] == ["keep"]
    _, health, _ = await call(http, "GET", single.url(1) + "/v1/health")
    assert health["status"] == "ok"


async def test_oversized_body_is_refused(single, http):
    status, got, _ = await call(
        http, "POST", records_url(single), data=io.BytesIO(b"x" * (9 * 1024 * 1024)), headers={"Content-Type": BATCH}
    )
    assert (status, got["code"], got["max_bytes"]) == (413, "BATCH_TOO_LARGE", 8 * 1024 * 1024)


async def test_idempotent_retry_returns_original_offsets(single, http):
    frame = encode_batch([(None, b"once", None, None)] * 2, producer_id=42, base_sequence=0)
    url = records_url(single)
    first = await call(http, "POST", url, data=frame, headers={"Content-Type": BATCH})
    again = await call(http, "POST", url, data=frame, headers={"Content-Type": BATCH})
    assert first[1] == {"base_offset": 0, "count": 2, "duplicate": False}
    assert again[1] == {"base_offset": 0, "count": 2, "duplicate": True}
    gap = encode_batch([(None, b"x", None, None)], producer_id=42, base_sequence=5)
    status, got, _ = await call(http, "POST", url, data=gap, headers={"Content-Type": BATCH})
    assert (status, got["code"], got["expected"]) == (409, "OUT_OF_ORDER_SEQUENCE", 2)


async def test_misrouted_request_names_the_owner(cluster_factory, http):
    cluster = cluster_factory(3, {"t": 12})
    _, topo, _ = await call(http, "GET", cluster.url(1) + "/v1/cluster")
    for p, owner in enumerate(topo["owners"]["t"]):
        other = next(b for b in (1, 2, 3) if b != owner)
        status, got, _ = await call(http, "POST", records_url(cluster, "t", p, other), json={"records": [{"value": "x"}]})
        assert (status, got["code"], got["owner_id"], got["owner_url"]) == (421, "NOT_OWNER", owner, cluster.url(owner))
        status, got, _ = await call(http, "POST", records_url(cluster, "t", p, owner), json={"records": [{"value": "x"}]})
        assert status == 200
    owners = {tuple((await call(http, "GET", u + "/v1/cluster"))[1]["owners"]["t"]) for u in cluster.urls}
    assert len(owners) == 1 and set(next(iter(owners))) == {1, 2, 3}


async def test_put_cluster_installs_newer_epoch_only(single, http):
    _, topo, _ = await call(http, "GET", single.url(1) + "/v1/cluster")
    status, got, _ = await call(http, "PUT", single.url(1) + "/v1/cluster", json=topo)
    assert (status, got["code"], got["epoch"]) == (409, "STALE_EPOCH", 1)
    topo["epoch"] = 2
    topo["topics"]["fresh"] = {"partitions": 2}
    topo.pop("owners")
    status, got, _ = await call(http, "PUT", single.url(1) + "/v1/cluster", json=topo)
    assert status == 200 and got["epoch"] == 2 and got["owners"]["fresh"] == [1, 1]
    status, _, _ = await call(http, "POST", records_url(single, "fresh", 1), json={"records": [{"value": "x"}]})
    assert status == 200
    _, health, _ = await call(http, "GET", single.url(1) + "/v1/health")
    assert health == {"status": "ok", "broker_id": 1, "epoch": 2, "version": version("shoal")}
    single.kill(1)  # an installed topology outlives a restart from the older file
    single.start(1)
    _, health, _ = await call(http, "GET", single.url(1) + "/v1/health")
    assert health["epoch"] == 2
    status, got, _ = await call(http, "GET", records_url(single, "fresh", 1), params={"offset": 0})
    assert (status, [r["value"] for r in got["records"]]) == (200, ["x"])


async def test_metrics_and_openapi(single, http):
    await call(http, "POST", records_url(single), json={"records": [{"value": "x"}] * 3})
    status, text, _ = await call(http, "GET", single.url(1) + "/metrics")
    text = text.decode()
    assert 'shoal_records_appended_total{topic="t"} 3.0' in text
    assert 'shoal_partition_high_watermark{partition="0",topic="t"} 3.0' in text
    status, doc, _ = await call(http, "GET", single.url(1) + "/v1/openapi.json")
    assert doc["openapi"].startswith("3.") and "/v1/topics/{topic}/partitions/{partition}/records" in doc["paths"]


def poison_frames() -> dict[str, bytes]:
    """Frames whose length, magic and CRC are right but whose records are not records."""
    now = now_ms()

    def framed(records: bytes, count: int) -> bytes:
        return frame_records(records, record_count=count, first_timestamp=now, max_timestamp=now)

    return {
        "integer record": framed(msgpack.packb([7]), 1),
        "2**32-1 records announced": framed(array_header(2**32 - 1) + msgpack.packb([0, None, b"v", None]), 2**32 - 1),
        "record of 3 fields": framed(msgpack.packb([[0, None, b"v"]]), 1),
        "string value": framed(msgpack.packb([[0, None, "text", None]]), 1),
        "headers not str->bin": framed(msgpack.packb([[0, None, b"v", {"h": 1}]]), 1),
        "timestamp past max_timestamp": framed(msgpack.packb([[5000, None, b"v", None]]), 1),
    }


@pytest.mark.parametrize("name", list(poison_frames()))
async def test_undecodable_records_are_refused_and_nothing_is_stored(single, http, name):
    """A frame that passes its CRC but whose records do not decode is 400 CORRUPT_BATCH."""
    url = records_url(single)
    status, got, _ = await call(http, "POST", url, data=poison_frames()[name], headers={"Content-Type": BATCH})
    assert (status, got["code"]) == (400, "CORRUPT_BATCH"), got
    _, offsets, _ = await call(http, "GET", single.url(1) + "/v1/topics/t/partitions/0/offsets")
    assert offsets["high_watermark"] == 0


async def test_a_stored_undecodable_batch_is_named_not_internal(single, http):
    """A JSON fetch meeting a stored batch that does not decode (written before produce-time
    checks) answers 422 CORRUPT_RECORD naming it, and reads on from next_offset."""
    url = records_url(single)
    await call(http, "POST", url, json={"records": [{"value": "before"}]})
    single.kill(1)
    (segment,) = (single.root / "broker-1" / "t-0").glob("*.log")
    poison = bytearray(poison_frames()["integer record"])
    patch_base_offset(poison, 0, 1)
    with open(segment, "ab") as f:
        f.write(poison)
    single.start(1)
    async with aiohttp.ClientSession() as fresh:  # the old session's connection died with the broker
        status, got, _ = await call(fresh, "POST", url, json={"records": [{"value": "after"}]})
        assert (status, got["base_offset"]) == (200, 2)
        status, got, _ = await call(fresh, "GET", url, params={"offset": 0})
        assert (status, [r["value"] for r in got["records"]]) == (200, ["before"])
        status, got, _ = await call(fresh, "GET", url, params={"offset": 1})
        assert (status, got["code"], got["offset"], got["next_offset"]) == (422, "CORRUPT_RECORD", 1, 2), got
        assert (got["topic"], got["partition"]) == ("t", 0)
        status, got, _ = await call(fresh, "GET", url, params={"offset": got["next_offset"]})
        assert (status, [r["value"] for r in got["records"]]) == (200, ["after"])


async def test_timestamps_too_far_ahead_are_refused(cluster_factory, http):
    """A batch stamped past max_future_ms (an hour by default; per topic) is 400
    INVALID_TIMESTAMP with timestamp and max_future_ms, and nothing is stored."""
    cluster = cluster_factory(1, {"t": 1, "strict": {"partitions": 1, "max_future_ms": 1000}})
    hour = 3600 * 1000
    cases = [
        ("t", now_ms() * 1_000_000, hour),  # nanoseconds by mistake
        ("t", now_ms() + hour + 60_000, hour),
        ("strict", now_ms() + 60_000, 1000),
    ]
    for topic, ts, limit in cases:
        frame = encode_batch([(None, b"early", None, now_ms()), (None, b"late", None, ts)])
        status, got, _ = await call(http, "POST", records_url(cluster, topic), data=frame, headers={"Content-Type": BATCH})
        assert (status, got["code"], got["timestamp"], got["max_future_ms"]) == (400, "INVALID_TIMESTAMP", ts, limit), got
        status, got, _ = await call(http, "POST", records_url(cluster, topic), json={"records": [{"value": "j", "timestamp": ts}]})
        assert (status, got["code"]) == (400, "INVALID_TIMESTAMP"), got
    status, got, _ = await call(http, "POST", records_url(cluster, "t"), json={"records": [{"value": "ok", "timestamp": now_ms() + 60_000}]})
    assert status == 200, got
    for topic, hw in (("t", 1), ("strict", 0)):
        _, offsets, _ = await call(http, "GET", f"{cluster.url(1)}/v1/topics/{topic}/partitions/0/offsets")
        assert offsets["high_watermark"] == hw


async def test_an_idempotent_batch_must_travel_alone(single, http):
    """A resent batch bundled with a new one is refused (as Kafka takes one batch per
    partition per request) instead of answered with a range over other producers' records."""
    url = records_url(single)
    first = encode_batch([(None, b"p1-0", None, None)], producer_id=42, base_sequence=0)
    status, got, _ = await call(http, "POST", url, data=first, headers={"Content-Type": BATCH})
    assert (status, got["base_offset"]) == (200, 0)
    await call(http, "POST", url, json={"records": [{"value": "other"}] * 5})
    second = encode_batch([(None, b"p1-1", None, None)], producer_id=42, base_sequence=1)
    status, got, _ = await call(http, "POST", url, data=first + second, headers={"Content-Type": BATCH})
    assert (status, got["code"], got["field"]) == (400, "INVALID_REQUEST", "body"), got
    _, offsets, _ = await call(http, "GET", single.url(1) + "/v1/topics/t/partitions/0/offsets")
    assert offsets["high_watermark"] == 6
    status, got, _ = await call(http, "POST", url, data=second, headers={"Content-Type": BATCH})
    assert got == {"base_offset": 6, "count": 1, "duplicate": False}
    plain = encode_batch([(None, b"a", None, None)]) + encode_batch([(None, b"b", None, None)] * 2)
    status, got, _ = await call(http, "POST", url, data=plain, headers={"Content-Type": BATCH})
    assert (status, got["base_offset"], got["count"]) == (200, 7, 3)  # frames without a producer id still share a body


async def test_put_cluster_deletes_only_topics_it_names(single, http):
    """A topology that merely leaves a topic out is refused; delete_topics deletes it."""
    url = records_url(single, "audit")
    await call(http, "POST", url, json={"records": [{"value": "keep"}]})
    _, topo, _ = await call(http, "GET", single.url(1) + "/v1/cluster")
    topo.pop("owners")
    del topo["topics"]["audit"]
    topo["epoch"] = 2
    status, got, _ = await call(http, "PUT", single.url(1) + "/v1/cluster", json=topo)
    assert (status, got["code"], got["field"]) == (400, "INVALID_REQUEST", "delete_topics"), got
    assert "audit" in got["detail"]
    status, got, _ = await call(http, "GET", url, params={"offset": 0})
    assert [r["value"] for r in got["records"]] == ["keep"]
    status, got, _ = await call(http, "PUT", single.url(1) + "/v1/cluster", json={**topo, "delete_topics": ["t"]})
    assert (status, got["field"]) == (400, "delete_topics")  # t is kept: naming it is a mistake
    status, got, _ = await call(http, "PUT", single.url(1) + "/v1/cluster", json={**topo, "delete_topics": ["audit"]})
    assert (status, got["epoch"]) == (200, 2) and "audit" not in got["topics"]
    status, got, _ = await call(http, "GET", url, params={"offset": 0})
    assert (status, got["code"]) == (404, "UNKNOWN_TOPIC")
    assert not (single.root / "broker-1" / "audit-0").exists()
