"""Bounded resources: requests in progress, buffered request bodies and per-partition write
queues each have a limit, answered with 429 THROTTLED and Retry-After, while health checks
keep answering."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import yaml
from aiohttp.test_utils import TestClient, TestServer

from shoal.broker.app import create_app
from shoal.broker.state import BROKER
from shoal.client.errors import ShoalError, Throttled
from shoal.client.records import encode_batch
from shoal.router.topology import Topology

BATCH = "application/vnd.shoal.batch"


def limited(cluster_factory, **settings):
    cluster = cluster_factory(1, {"t": 2}, start=False)
    cluster.config["settings"] = settings
    cluster.config_path.write_text(yaml.safe_dump(cluster.config, sort_keys=False))
    cluster.start()
    return cluster


async def expect_throttled(resp: aiohttp.ClientResponse) -> Throttled:
    assert resp.status == 429, await resp.text()
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert resp.headers["Retry-After"] == "1"
    err = ShoalError.from_problem(await resp.read())
    assert isinstance(err, Throttled) and err.retriable
    return err


def stalled_upload(port: int, path: str = "/v1/topics/t/partitions/0/records", length: int = 8 * 1024 * 1024) -> socket.socket:
    """A POST announcing ``length`` bytes that sends ten and stalls. Returns once the
    broker has begun serving it (it answered ``Expect: 100-continue``)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {BATCH}\r\nContent-Length: {length}\r\n"
        "Expect: 100-continue\r\n\r\n".encode()
    )
    assert sock.recv(64).startswith(b"HTTP/1.1 100"), "the broker did not take the upload"
    sock.sendall(b"x" * 10)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


async def test_requests_past_max_connections_are_throttled(cluster_factory):
    """With max_connections requests in progress, one more is 429; health still answers; room returns."""
    cluster = limited(cluster_factory, max_connections=8)
    url = cluster.url(1)
    stalled = [stalled_upload(cluster.ports[1]) for _ in range(8)]
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/v1/topics/t/partitions/1/offsets") as resp:
            err = await expect_throttled(resp)
        assert "max_connections" in err.detail
        async with http.get(url + "/v1/health") as resp:
            assert resp.status == 200
        async with http.get(url + "/metrics") as resp:
            assert resp.status == 200
        for sock in stalled:
            sock.close()
        async with asyncio.timeout(10):
            while True:
                async with http.get(url + "/v1/topics/t/partitions/1/offsets") as resp:
                    if resp.status == 200:
                        break
                    await expect_throttled(resp)
                await asyncio.sleep(0.02)


async def test_long_polls_have_their_own_budget(cluster_factory):
    """Parked long-polls count against max_long_polls, not max_connections: produce,
    commits and offsets still answer while they wait, and one long-poll too many is 429."""
    cluster = limited(cluster_factory, max_connections=2, max_long_polls=4)
    url = cluster.url(1)
    records = url + "/v1/topics/t/partitions/0/records"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def long_poll(wait_ms: int) -> int:
            async with http.get(records, params={"offset": 0, "max_wait_ms": wait_ms}) as resp:
                if resp.status == 429:
                    assert "max_long_polls" in (await expect_throttled(resp)).detail
                return resp.status

        # Park four (one may lose its slot to the probe itself and be refused: it is
        # started again) until a fifth is refused.
        parked = {asyncio.create_task(long_poll(20_000)) for _ in range(4)}
        async with asyncio.timeout(20):
            while await long_poll(1) != 429:
                for done in [task for task in parked if task.done()]:
                    assert done.result() == 429
                    parked.remove(done)
                    parked.add(asyncio.create_task(long_poll(20_000)))
                await asyncio.sleep(0.02)
        assert not any(task.done() for task in parked)
        async with http.post(url + "/v1/topics/t/partitions/1/records", json={"records": [{"value": "v"}]}) as resp:
            assert resp.status == 200, await resp.text()
        async with http.put(url + "/v1/groups/g/topics/t/partitions/1/offset", json={"offset": 1}) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(url + "/v1/topics/t/partitions/1/offsets") as resp:
            assert resp.status == 200
        async with http.post(records, json={"records": [{"value": "wake"}]}) as resp:
            assert resp.status == 200
        assert await asyncio.gather(*parked) == [200] * 4


async def test_stalled_uploads_do_not_refuse_other_requests(cluster_factory, tmp_path):
    """32 uploads announcing 8 MiB each and stalling (enough to reserve all 256 MiB of
    max_buffered_bytes when counted by Content-Length) leave produce, commit, join and
    heartbeat answering: bodies count the bytes that arrived."""
    cluster = cluster_factory(1, {"t": 2})
    url = cluster.url(1)
    stalled = [stalled_upload(cluster.ports[1]) for _ in range(32)]
    try:
        async with aiohttp.ClientSession() as http:
            body = encode_batch([(None, b"v" * 1000, None, None)])
            async with http.post(url + "/v1/topics/t/partitions/1/records", data=body, headers={"Content-Type": BATCH}) as resp:
                assert resp.status == 200, await resp.text()
            async with http.put(url + "/v1/groups/g/topics/t/partitions/1/offset", json={"offset": 1}) as resp:
                assert resp.status == 200, await resp.text()
            async with http.post(url + "/v1/groups/members-test/members", json={"topics": ["t"]}) as resp:
                joined = await resp.json()
                assert resp.status == 200, joined
            member = f"{url}/v1/groups/members-test/members/{joined['member_id']}/heartbeat"
            async with http.post(member, json={"owned": {}}) as resp:
                assert resp.status == 200, await resp.text()
    finally:
        for sock in stalled:
            sock.close()


async def test_a_stalled_body_is_cut_at_the_deadline(cluster_factory):
    """A body that has not arrived whole within body_timeout_ms gets 408 REQUEST_TIMEOUT,
    and the connection is closed."""
    cluster = limited(cluster_factory, body_timeout_ms=300)
    sock = stalled_upload(cluster.ports[1])
    try:
        answer = read_until_closed(sock)
    finally:
        sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"Connection: close" in head
    problem = ShoalError.from_problem(body)
    assert (problem.code, problem.timeout_ms, problem.retriable) == ("REQUEST_TIMEOUT", 300, True)


async def test_json_fetch_answers_at_most_a_mebibyte(cluster_factory):
    """A JSON fetch decodes at most 1 MiB of stored frames (at least one batch), whatever
    max_bytes asks; the batch form serves up to max_bytes."""
    cluster = cluster_factory(1, {"t": 1})
    url = cluster.url(1) + "/v1/topics/t/partitions/0/records"
    async with aiohttp.ClientSession() as http:
        for i in range(4):
            body = encode_batch([(None, b"%d" % i * 400_000, None, None)])
            async with http.post(url, data=body, headers={"Content-Type": BATCH}) as resp:
                assert resp.status == 200
        params = {"offset": 0, "max_bytes": 8 * 1024 * 1024}
        async with http.get(url, params=params) as resp:
            got = await resp.json()
        assert [r["offset"] for r in got["records"]] == [0, 1] and got["high_watermark"] == 4
        async with http.get(url, params={**params, "offset": 2}) as resp:
            assert [r["offset"] for r in (await resp.json())["records"]] == [2, 3]
        async with http.get(url, params=params, headers={"Accept": BATCH}) as resp:
            assert len(await resp.read()) > 1_600_000


async def test_bodies_past_max_buffered_bytes_are_throttled(cluster_factory):
    """While most of one large body is held, a second that would pass the budget is 429."""
    cluster = limited(cluster_factory, max_buffered_bytes=1_000_000)
    body = encode_batch([(None, b"v" * 700_000, None, None)])
    head = (
        f"POST /v1/topics/t/partitions/0/records HTTP/1.1\r\nHost: x\r\nContent-Type: {BATCH}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    slow = socket.create_connection(("127.0.0.1", cluster.ports[1]))
    try:
        slow.sendall(head + body[:-1000])  # the broker now holds ~700 KB of a request in progress
        url = cluster.url(1) + "/v1/topics/t/partitions/1/records"
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(10):
                while True:
                    async with http.post(url, data=body, headers={"Content-Type": BATCH}) as resp:
                        if resp.status == 429:
                            err = await expect_throttled(resp)
                            break
                        assert resp.status == 200  # the slow request's bytes had not all arrived yet
                    await asyncio.sleep(0.02)
            assert "max_buffered_bytes" in err.detail
            slow.sendall(body[-1000:])
            answer = slow.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            async with http.post(url, data=body, headers={"Content-Type": BATCH}) as resp:
                assert resp.status == 200
    finally:
        slow.close()


async def test_a_full_partition_queue_is_throttled(tmp_path):
    """Appends beyond a partition's max_queue_bytes get 429 with Retry-After; every 200 is stored."""
    topology = Topology.from_dict({
        "brokers": [{"id": 1, "url": "http://127.0.0.1:1"}],
        "topics": {"t": {"partitions": 1, "flush": "always"}},
        "settings": {"max_queue_bytes": 100_000},
    })
    app = create_app(topology, 1, tmp_path / "data")
    async with TestClient(TestServer(app)) as client:
        body = encode_batch([(None, b"q" * 40_000, None, None)])
        first = await client.post("/v1/topics/t/partitions/0/records", data=body, headers={"Content-Type": BATCH})
        assert first.status == 200
        plog = app[BROKER].logs.get("t", 0)
        assert plog.config.max_queue_bytes == 100_000  # from cluster.yaml's settings
        statuses: list[int] = []
        async with asyncio.timeout(30):
            while 429 not in statuses:
                responses = await asyncio.gather(*(
                    client.post("/v1/topics/t/partitions/0/records", data=body, headers={"Content-Type": BATCH})
                    for _ in range(30)
                ))
                for resp in responses:
                    statuses.append(resp.status)
                    if resp.status == 429:
                        await expect_throttled(resp)
                    resp.release()
        assert set(statuses) == {200, 429}
        offsets = await (await client.get("/v1/topics/t/partitions/0/offsets")).json()
        assert offsets["high_watermark"] == 1 + statuses.count(200)
        assert plog.stats.throttled == statuses.count(429)
