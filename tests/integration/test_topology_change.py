"""Ownership changes never strand an acknowledged write: a partition moving away is frozen
and drained before the switch, and a stored topology newer than cluster.yaml is held back
until the other brokers have it."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import yaml
from aiohttp.test_utils import TestClient, TestServer

from shoal.broker.app import create_app
from shoal.client.records import encode_batch
from shoal.router.topology import Topology

BATCH = "application/vnd.shoal.batch"


def brokers(*ids: int) -> list[dict]:
    return [{"id": i, "url": f"http://127.0.0.1:{9000 + i}"} for i in ids]


async def test_a_write_admitted_before_an_ownership_change_keeps_the_partition(tmp_path):
    """An append queued in the writer when a PUT moves its (still empty) partition away is
    waited for: the PUT then finds data and is refused, while new appends to the frozen
    partition meanwhile get 421 NOT_OWNER naming the new owner."""
    body = {"cluster": "c", "epoch": 1, "brokers": brokers(1, 2), "topics": {"t": {"partitions": 24, "flush": "always"}}}
    old = Topology.from_dict(body)
    new_body = {**body, "epoch": 2, "brokers": brokers(1, 2, 3)}
    new = Topology.from_dict(new_body)
    p = next(p for p in range(24) if old.owner("t", p).id == 1 and new.owner("t", p).id == 3)
    records = f"/v1/topics/t/partitions/{p}/records"
    app = create_app(old, 1, tmp_path / "data")
    async with TestClient(TestServer(app)) as client:
        assert (await client.get(f"/v1/topics/t/partitions/{p}/offsets")).status == 200  # the log exists, empty
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(1)  # the broker's fsyncs and file renames run here
        loop.set_default_executor(executor)
        gate = threading.Event()
        blocker = loop.run_in_executor(None, gate.wait)  # ... and wait until the gate opens
        try:
            append = asyncio.create_task(client.post(records, data=encode_batch([(None, b"acked", None, None)]),
                                                     headers={"Content-Type": BATCH}))
            segment = tmp_path / "data" / f"t-{p}" / f"{0:020d}.log"
            async with asyncio.timeout(10):  # written, waiting for its fsync: not yet acknowledged
                while not segment.exists() or segment.stat().st_size == 0:
                    await asyncio.sleep(0.01)
            put = asyncio.create_task(client.put("/v1/cluster", json=new_body))
            async with asyncio.timeout(10):  # frozen: the partition now answers NOT_OWNER
                while (resp := await client.get(f"/v1/topics/t/partitions/{p}/offsets")).status != 421:
                    assert resp.status == 200
                    await asyncio.sleep(0.01)
            refused = await client.post(records, json={"records": [{"value": "late"}]})
            problem = await refused.json()
            assert (refused.status, problem["code"], problem["owner_id"], problem["epoch"]) == (421, "NOT_OWNER", 3, 2)
            assert not put.done()
        finally:
            gate.set()
            await blocker
        acked = await append
        assert acked.status == 200 and (await acked.json())["base_offset"] == 0
        answer = await put
        problem = await answer.json()
        assert (answer.status, problem["code"], problem["partitions"]) == (409, "TOPOLOGY_CONFLICT", [f"t/{p}"])
        health = await (await client.get("/v1/health")).json()
        assert health["epoch"] == 1
        offsets = await (await client.get(f"/v1/topics/t/partitions/{p}/offsets")).json()
        assert offsets["high_watermark"] == 1
    executor.shutdown()


async def test_a_stored_topology_ahead_of_the_cluster_is_held_back(cluster_factory):
    """A broker restarted with a topology.json newer than cluster.yaml (the epoch reached
    it alone) does not serve the partitions that epoch gives it until the other brokers
    of that epoch have it: until then only one broker writes each partition."""
    cluster = cluster_factory(3, {"t": 12})
    body = yaml.safe_load(cluster.config_path.read_text())
    old = Topology.from_dict(body)
    epoch2 = {**body, "epoch": 2, "brokers": [b for b in body["brokers"] if b["id"] != 3]}
    new = Topology.from_dict(epoch2)
    p = next(p for p in range(12) if old.owner("t", p).id == 3 and new.owner("t", p).id == 1)
    async with aiohttp.ClientSession() as http:
        async with http.put(cluster.url(1) + "/v1/cluster", json=epoch2) as resp:
            assert resp.status == 200, await resp.text()
    cluster.kill(1)
    cluster.start(1)
    async with aiohttp.ClientSession() as http:

        async def append(broker_id: int) -> tuple[int, dict]:
            url = f"{cluster.url(broker_id)}/v1/topics/t/partitions/{p}/records"
            async with http.post(url, json={"records": [{"value": f"via {broker_id}"}]}) as resp:
                return resp.status, await resp.json()

        async with http.get(cluster.url(1) + "/v1/health") as resp:
            health = await resp.json()
        assert (health["epoch"], health.get("pending_epoch")) == (1, 2)
        status, problem = await append(1)
        assert (status, problem["code"], problem["owner_id"]) == (421, "NOT_OWNER", 3), problem
        status, _ = await append(3)
        assert status == 200  # broker 3 is the one writer of p while epoch 1 is in force
        cluster.terminate(3)  # as `shoal topology apply` requires before removing a broker
        async with http.put(cluster.url(2) + "/v1/cluster", json=epoch2) as resp:
            assert resp.status == 200, await resp.text()
        async with asyncio.timeout(20):  # broker 1 sees broker 2 at epoch 2 and puts it in force
            while True:
                async with http.get(cluster.url(1) + "/v1/health") as resp:
                    health = await resp.json()
                if health["epoch"] == 2:
                    break
                await asyncio.sleep(0.1)
        assert "pending_epoch" not in health
        status, _ = await append(1)
        assert status == 200
