"""Crash loop: brokers of a 3-broker cluster killed with SIGKILL at random moments while
idempotent producers (flush policy ``always``) append and consumers commit offsets. Segments
are tiny (``SEGMENT_BYTES``: two or three batches), so the log rolls all the time and a
kill usually finds a producer whose last batches sit in sealed segments; after each kill
the victim's producers resend the batch they had acknowledged before it.

Afterwards every record a producer sent is stored exactly once, in its producer's
order; every resent batch was answered as a duplicate at its original offset; every acknowledged offset holds the acknowledged record; consumers saw the
same record at every offset each time they read it; committed offsets never went
backwards; and every broker restarted. ``SHOAL_SOAK=1`` runs 20 kills in about two
minutes; the default run is 6 kills in about half a minute. ``SHOAL_SEED`` replays a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from shoal.client.records import decode_fetch, encode_batch
from tests.harness import env_flag

pytestmark = pytest.mark.soak

BATCH = "application/vnd.shoal.batch"
TOPIC, PARTITIONS, WRITERS, GROUP = "cl", 6, 2, "crash-loop"
SEGMENT_BYTES = 256  # two or three batches per segment
SOAK = env_flag("SHOAL_SOAK")
KILLS = 20 if SOAK else 6
GAP_S = (3.0, 9.0) if SOAK else (1.0, 4.0)  # running time between two kills
RETRY_S = 0.05
GIVE_UP_S = 60  # no request may stay unanswered this long after the last restart


@dataclass
class Log:
    """What the clients saw, checked against the partitions at the end."""

    sent: dict[int, list[bytes]] = field(default_factory=lambda: defaultdict(list))  # partition -> values, send order
    acked: dict[int, dict[int, bytes]] = field(default_factory=lambda: defaultdict(dict))  # offset -> value
    seen: dict[int, dict[int, bytes]] = field(default_factory=lambda: defaultdict(dict))  # what consumers read
    commits: dict[int, int] = field(default_factory=dict)  # last acknowledged commit per partition
    problems: list[str] = field(default_factory=list)
    requests_failed: int = 0
    resent: int = 0  # acknowledged batches resent after a restart (each must be a duplicate)


class Cluster:
    def __init__(self, cluster):
        self.cluster = cluster
        self.owners: list[int] = []
        self.last_acked: dict[tuple[int, int], tuple[bytes, int]] = {}  # (partition, writer) -> body, base
        self.to_resend: dict[tuple[int, int], tuple[bytes, int]] = {}  # what each writer had acked at a kill

    def url(self, partition: int) -> str:
        return self.cluster.url(self.owners[partition])


async def _retrying(http, log: Log, stop_by: list[float], method: str, url: str, **kw):
    """The JSON answer of a 2xx, retrying while the owner is down; a 4xx other than 429 is a problem."""
    while True:
        try:
            async with http.request(method, url, timeout=aiohttp.ClientTimeout(total=10), **kw) as resp:
                body = await resp.read()
                if resp.status < 300:
                    return resp, body
                if resp.status != 429 and resp.status < 500:
                    log.problems.append(f"{method} {url}: {resp.status} {body[:300]!r}")
                    return None, body
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            pass
        log.requests_failed += 1
        if time.monotonic() > stop_by[0]:
            log.problems.append(f"{method} {url}: no answer by the deadline")
            return None, b""
        await asyncio.sleep(RETRY_S)


async def produce(http, where: Cluster, log: Log, p: int, writer: int, stop: asyncio.Event, stop_by: list[float]) -> None:
    """An idempotent producer: one batch in flight, the same batch resent until acknowledged.

    After its partition's broker was killed it also resends the last batch acknowledged
    before the kill, as a producer that missed that acknowledgement would: the broker
    must answer with the original offset, whatever segment that batch is in now.
    """
    producer_id = 1000 * (p + 1) + writer
    seq = 0
    rng = random.Random(producer_id)
    url = f"/v1/topics/{TOPIC}/partitions/{p}/records"
    headers = {"Content-Type": BATCH}
    while not stop.is_set():
        earlier = where.to_resend.pop((p, writer), None)
        if earlier is not None:
            resp, answer = await _retrying(http, log, stop_by, "POST", where.url(p) + url, data=earlier[0], headers=headers)
            if resp is None:
                return
            ack = json.loads(answer)
            log.resent += 1
            if (ack["base_offset"], ack["duplicate"]) != (earlier[1], True):
                log.problems.append(f"partition {p} producer {producer_id}: resent batch answered {ack}, "
                                    f"expected the duplicate at {earlier[1]}")
        values = [f"{p}:{writer}:{seq + i}".encode() for i in range(rng.randint(1, 4))]
        body = encode_batch([(None, v, None, None) for v in values], producer_id=producer_id, base_sequence=seq)
        log.sent[p].extend(values)
        resp, answer = await _retrying(http, log, stop_by, "POST", where.url(p) + url, data=body, headers=headers)
        if resp is None:
            return
        base = json.loads(answer)["base_offset"]
        for i, v in enumerate(values):
            log.acked[p][base + i] = v
        seq += len(values)
        where.last_acked[(p, writer)] = (body, base)


async def consume(http, where: Cluster, log: Log, p: int, done: asyncio.Event, stop_by: list[float]) -> None:
    """Read from the committed offset and commit after each fetch; after any failure start
    over from the committed offset, as a restarted consumer would."""
    base = f"/v1/topics/{TOPIC}/partitions/{p}"
    committed_path = f"/v1/groups/{GROUP}/topics/{TOPIC}/partitions/{p}/offset"
    position = None
    while True:
        if position is None:
            resp, answer = await _retrying(http, log, stop_by, "GET", where.url(p) + committed_path)
            if resp is None:
                return
            committed = json.loads(answer)["offset"] or 0
            if committed < log.commits.get(p, 0):
                log.problems.append(f"partition {p}: committed offset went back from {log.commits[p]} to {committed}")
            position = committed
        try:
            async with http.get(
                where.url(p) + base + "/records", params={"offset": position, "max_wait_ms": 200, "max_bytes": 65536},
                headers={"Accept": BATCH}, timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                if resp.status != 200:
                    position = None
                    await asyncio.sleep(RETRY_S)
                    continue
                frames = await resp.read()
                hw = int(resp.headers["Shoal-High-Watermark"])
            records = list(decode_fetch(TOPIC, p, frames, min_offset=position))
            if [r.offset for r in records] != list(range(position, position + len(records))):
                log.problems.append(f"partition {p}: fetch from {position} gave offsets {[r.offset for r in records][:10]}")
            for r in records:
                if log.seen[p].setdefault(r.offset, r.value) != r.value:
                    log.problems.append(f"partition {p} offset {r.offset}: read {r.value!r}, earlier {log.seen[p][r.offset]!r}")
            position += len(records)
            if records:
                async with http.put(
                    where.url(p) + committed_path, json={"offset": position}, timeout=aiohttp.ClientTimeout(total=10)
                ) as resp:
                    if resp.status != 200:
                        position = None
                        continue
                log.commits[p] = position
            elif done.is_set() and position >= hw:
                return
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, KeyError):
            position = None
            log.requests_failed += 1
            await asyncio.sleep(RETRY_S)


async def read_partition(http, url: str, p: int) -> tuple[list, int]:
    records, offset = [], 0
    while True:
        async with http.get(f"{url}/v1/topics/{TOPIC}/partitions/{p}/records",
                            params={"offset": offset, "max_bytes": 8 << 20}, headers={"Accept": BATCH}) as resp:
            assert resp.status == 200, await resp.text()
            frames = await resp.read()
            hw = int(resp.headers["Shoal-High-Watermark"])
        batch = list(decode_fetch(TOPIC, p, frames, min_offset=offset))
        records += batch
        offset += len(batch)
        if offset >= hw or not batch:
            return records, hw


async def test_every_acknowledged_record_survives_a_crash_loop(cluster_factory):
    """Producers and committing consumers keep going while brokers are killed with SIGKILL and restarted."""
    seed = int(os.environ.get("SHOAL_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    cluster = cluster_factory(
        3, {TOPIC: {"partitions": PARTITIONS, "flush": "always", "segment_bytes": SEGMENT_BYTES}}
    )
    where = Cluster(cluster)
    where.owners = [cluster.owner(TOPIC, p) for p in range(PARTITIONS)]
    assert len(set(where.owners)) > 1, "the partitions should spread over the brokers"
    log = Log()
    stop, done = asyncio.Event(), asyncio.Event()
    stop_by = [float("inf")]
    kills = defaultdict(int)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        producers = [asyncio.create_task(produce(http, where, log, p, w, stop, stop_by))
                     for p in range(PARTITIONS) for w in range(WRITERS)]
        consumers = [asyncio.create_task(consume(http, where, log, p, done, stop_by)) for p in range(PARTITIONS)]
        try:
            for _ in range(KILLS):
                await asyncio.sleep(rng.uniform(*GAP_S))
                victim = rng.choice(list(cluster.ports))
                await asyncio.to_thread(cluster.kill, victim)
                kills[victim] += 1
                where.to_resend.update(
                    (key, acked) for key, acked in where.last_acked.items() if where.owners[key[0]] == victim
                )
                await asyncio.sleep(rng.uniform(0, 0.3))
                await asyncio.to_thread(cluster.start, victim)  # raises if it does not come back
            stop_by[0] = time.monotonic() + GIVE_UP_S
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*producers)
            done.set()
            await asyncio.gather(*consumers)
        finally:
            stop.set()
            done.set()
            stop_by[0] = 0
            await asyncio.gather(*producers, *consumers, return_exceptions=True)

        context = f"seed {seed}, kills {dict(kills)}"
        assert not log.problems, f"{context}: {log.problems[:10]}"
        verified = 0
        for p in range(PARTITIONS):
            records, hw = await read_partition(http, where.url(p), p)
            stored = [r.value for r in records]
            assert [r.offset for r in records] == list(range(hw)), context
            assert len(set(stored)) == len(stored), f"{context}: partition {p} holds a record twice"
            assert sorted(stored) == sorted(log.sent[p]), f"{context}: partition {p} lost or invented records"
            for offset, value in log.acked[p].items():
                assert stored[offset] == value, f"{context}: partition {p} offset {offset}"
            for offset, value in log.seen[p].items():
                assert stored[offset] == value, f"{context}: consumer read {value!r} at {p}/{offset}"
            by_writer = defaultdict(list)
            for value in stored:
                _, writer, n = value.decode().split(":")
                by_writer[writer].append(int(n))
            assert all(ns == sorted(ns) for ns in by_writer.values()), f"{context}: partition {p} out of order"
            async with http.get(f"{where.url(p)}/v1/groups/{GROUP}/topics/{TOPIC}/partitions/{p}/offset") as resp:
                assert (await resp.json())["offset"] == log.commits[p] == hw, context
            verified += len(stored)
    assert sum(kills.values()) == KILLS
    segments = sum(len(list(Path(b["data_dir"]).glob(f"{TOPIC}-*/*.log"))) for b in cluster.config["brokers"])
    assert segments > 4 * PARTITIONS, "the logs should have rolled many times"
    assert log.resent > 0
    print(f"\ncrash loop: {KILLS} kills survived ({dict(kills)}), {verified} records verified in {segments} segments, "
          f"{log.resent} acknowledged batches resent after restarts and recognised, "
          f"{sum(len(a) for a in log.acked.values())} acknowledged, {log.requests_failed} requests retried, seed {seed}")
