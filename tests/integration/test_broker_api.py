"""HTTP API v1 of real broker processes: the data plane, committed offsets, cluster ops."""

from __future__ import annotations

import asyncio
import io
import json

import aiohttp
import pytest

from shoal.client.errors import ShoalError
from shoal.client.records import encode_batch, iter_frames, read_header

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
    assert body[8:] == frames[1][8:]  # the batch holding offset 4 starts at 3
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
    assert health == {"status": "ok", "broker_id": 1, "epoch": 2}
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
