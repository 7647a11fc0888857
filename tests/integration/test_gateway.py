"""The gateway in front of three real brokers."""

from __future__ import annotations

import subprocess
import sys
import time

import aiohttp
import pytest

from shoal.client.partitioner import partition_for_key
from tests.harness import free_port, http_json


@pytest.fixture
def gateway(cluster_factory):
    cluster = cluster_factory(3, {"t": 6})
    port = free_port()
    log = open(cluster.root / "gateway.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal.router.gateway.app", "--config", str(cluster.config_path), "--listen", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if http_json("GET", url + "/v1/health", timeout=1)[0] == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (cluster.root / "gateway.log").read_text()
        time.sleep(0.05)
    yield cluster, url
    proc.terminate()
    proc.wait(10)
    log.close()


async def test_round_trips_every_partition(gateway):
    """Produce, fetch and commit through the gateway reach each partition's owner."""
    cluster, url = gateway
    async with aiohttp.ClientSession() as http:
        for p in range(6):
            base = f"{url}/v1/topics/t/partitions/{p}"
            async with http.post(base + "/records", json={"records": [{"value": f"v{p}"}]}) as resp:
                assert resp.status == 200, await resp.text()
            async with http.get(base + "/records", params={"offset": 0}) as resp:
                assert [r["value"] for r in (await resp.json())["records"]] == [f"v{p}"]
            async with http.put(f"{url}/v1/groups/g/topics/t/partitions/{p}/offset", json={"offset": 1}) as resp:
                assert resp.status == 200
            owner = cluster.owner("t", p)
            status, direct = http_json("GET", f"{cluster.url(owner)}/v1/topics/t/partitions/{p}/offsets")
            assert direct["high_watermark"] == 1
        async with http.get(f"{url}/v1/groups/g") as resp:
            view = await resp.json()
        assert [(r["partition"], r["offset"], r["lag"]) for r in view["partitions"]] == [(p, 1, 0) for p in range(6)]


async def test_keyed_records_land_on_the_murmur2_partition(gateway):
    cluster, url = gateway
    keys = [f"user-{i}" for i in range(20)]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/topics/t/records", json={"records": [{"key": k, "value": k} for k in keys]}) as resp:
            body = await resp.json()
    assert [o["partition"] for o in body["offsets"]] == [partition_for_key(k.encode(), 6) for k in keys]


async def test_broker_down_gives_503_for_its_partitions_only(gateway):
    cluster, url = gateway
    owners = [cluster.owner("t", p) for p in range(6)]
    victim = owners[0]
    cluster.kill(victim)
    async with aiohttp.ClientSession() as http:
        for p, owner in enumerate(owners):
            async with http.post(f"{url}/v1/topics/t/partitions/{p}/records", json={"records": [{"value": "x"}]}) as resp:
                body = await resp.json()
                if owner == victim:
                    assert (resp.status, body["code"], body["broker_id"]) == (503, "BROKER_UNAVAILABLE", victim)
                else:
                    assert resp.status == 200, body


async def test_group_views_answer_what_is_known_and_name_missing_brokers(gateway):
    """With one broker down, GET /v1/groups and /v1/groups/{g} list the others' partitions
    and name the missing broker in unavailable_brokers, instead of 503."""
    cluster, url = gateway
    owners = [cluster.owner("t", p) for p in range(6)]
    async with aiohttp.ClientSession() as http:
        for p in range(6):
            async with http.post(f"{url}/v1/topics/t/partitions/{p}/records", json={"records": [{"value": "x"}] * 2}) as resp:
                assert resp.status == 200
            async with http.put(f"{url}/v1/groups/g/topics/t/partitions/{p}/offset", json={"offset": 1}) as resp:
                assert resp.status == 200, await resp.text()
        async with http.get(f"{url}/v1/groups") as resp:
            body = await resp.json()
        assert (resp.status, body.get("unavailable_brokers")) == (200, []), body
        victim = owners[0]
        cluster.kill(victim)
        alive = sorted(p for p, owner in enumerate(owners) if owner != victim)
        async with http.get(f"{url}/v1/groups") as resp:
            body = await resp.json()
        assert (resp.status, body.get("unavailable_brokers")) == (200, [victim]), body
        (group,) = body["groups"]
        assert [r["partition"] for r in group["partitions"]] == alive
        assert group["lag"] == len(alive)
        async with http.get(f"{url}/v1/groups/g") as resp:
            body = await resp.json()
        assert (resp.status, body.get("unavailable_brokers")) == (200, [victim]), body
        assert [r["partition"] for r in body["partitions"]] == alive
