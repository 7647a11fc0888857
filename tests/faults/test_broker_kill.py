"""kill -9 of a broker while producers append under flush policy ``always``."""

from __future__ import annotations

import asyncio

import aiohttp

from shoal.client.records import decode_fetch, encode_batch

BATCH = "application/vnd.shoal.batch"


async def _produce_until_refused(url: str, acked: list, writer: str, stop: asyncio.Event) -> None:
    """Append 1-record batches numbered ``writer:n`` until the broker goes away."""
    n = 0
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            value = f"{writer}:{n}".encode()
            try:
                async with http.post(url, data=encode_batch([(None, value, None, None)]),
                                     headers={"Content-Type": BATCH}) as resp:
                    if resp.status != 200:
                        return
                    ack = await resp.json()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return
            acked.append((ack["base_offset"], value))
            n += 1


async def test_every_acknowledged_record_survives_kill_9(cluster_factory):
    """Acked records are all served after a restart, once each, in offset order."""
    cluster = cluster_factory(1, {"t": {"partitions": 1, "flush": "always"}})
    url = f"{cluster.url(1)}/v1/topics/t/partitions/0/records"
    for round_ in range(3):
        acked: list = []
        stop = asyncio.Event()
        writers = [asyncio.create_task(_produce_until_refused(url, acked, f"{round_}.{w}", stop)) for w in range(4)]
        while len(acked) < 200 * (round_ + 1):
            await asyncio.sleep(0.01)
            assert not all(w.done() for w in writers), cluster.tail(1)
        cluster.kill(1)  # while the writers are mid-request
        stop.set()
        await asyncio.gather(*writers)
        cluster.start(1)

        async with aiohttp.ClientSession() as http:
            async with http.get(url, params={"offset": 0, "max_bytes": 64 << 20}, headers={"Accept": BATCH}) as resp:
                body = await resp.read()
                hw = int(resp.headers["Shoal-High-Watermark"])
        records = list(decode_fetch("t", 0, body))
        assert [r.offset for r in records] == list(range(hw))
        stored = {r.offset: r.value for r in records}
        for offset, value in acked:
            assert stored.get(offset) == value
        values = [r.value for r in records]
        assert len(values) == len(set(values))  # nothing stored twice
