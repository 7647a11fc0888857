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


async def test_requests_past_max_connections_are_throttled(cluster_factory):
    """With max_connections long-polls waiting, one more request is 429; health still answers; room returns."""
    cluster = limited(cluster_factory, max_connections=8)
    url = cluster.url(1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def long_poll() -> int:
            params = {"offset": 0, "max_wait_ms": 2000}
            async with http.get(url + "/v1/topics/t/partitions/0/records", params=params) as resp:
                return resp.status

        # Keep eight long-polls parked (one may lose its slot to the probe itself and be
        # refused: it is started again) until the probe is refused.
        polls = {asyncio.create_task(long_poll()) for _ in range(8)}
        async with asyncio.timeout(20):
            while True:
                async with http.get(url + "/v1/topics/t/partitions/1/offsets") as resp:
                    if resp.status == 429:
                        err = await expect_throttled(resp)
                        break
                    assert resp.status == 200
                for done in [task for task in polls if task.done()]:
                    assert done.result() in (200, 429)
                    polls.remove(done)
                    polls.add(asyncio.create_task(long_poll()))
                await asyncio.sleep(0.02)
        assert "max_connections" in err.detail
        async with http.get(url + "/v1/health") as resp:
            assert resp.status == 200
        async with http.get(url + "/metrics") as resp:
            assert resp.status == 200
        assert set(await asyncio.gather(*polls)) <= {200, 429}
        async with http.get(url + "/v1/topics/t/partitions/1/offsets") as resp:
            assert resp.status == 200


async def test_bodies_past_max_buffered_bytes_are_throttled(cluster_factory):
    """While one large body is being received, a second that would pass the budget is 429."""
    cluster = limited(cluster_factory, max_buffered_bytes=1_000_000)
    body = encode_batch([(None, b"v" * 700_000, None, None)])
    head = (
        f"POST /v1/topics/t/partitions/0/records HTTP/1.1\r\nHost: x\r\nContent-Type: {BATCH}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    slow = socket.create_connection(("127.0.0.1", cluster.ports[1]))
    try:
        slow.sendall(head + body[:1000])  # the broker now holds a 700 KB request in progress
        url = cluster.url(1) + "/v1/topics/t/partitions/1/records"
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(10):
                while True:
                    async with http.post(url, data=body, headers={"Content-Type": BATCH}) as resp:
                        if resp.status == 429:
                            err = await expect_throttled(resp)
                            break
                        assert resp.status == 200  # the slow request was not counted yet
                    await asyncio.sleep(0.02)
            assert "max_buffered_bytes" in err.detail
            slow.sendall(body[1000:])
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
