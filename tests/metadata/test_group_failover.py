"""Committed offsets and group coordination of a replicated cluster survive a broker's
SIGKILL: three real brokers at factor 3 (``min_insync_replicas`` 2), a real etcd, a real
consumer group. The group resumes from what was acknowledged as committed, a member of
before the failover is fenced, and an acknowledged commit is in the segment files of at
least ``min_insync_replicas`` brokers."""

from __future__ import annotations

import asyncio
import time

import msgpack
import pytest

from shoal.broker.replication.offsets_topic import OFFSETS_TOPIC, partition_for
from shoal.client import AsyncConsumer, AsyncProducer
from shoal.client.records import decode_records, iter_frames
from shoal.client.structs import TopicPartition
from tests.harness import http_json
from tests.metadata.helpers import poll

TOPIC = "t"
GROUP = "billing"
SESSION_MS = 2000
RECORDS = 60


@pytest.fixture
def replicated(cluster_factory, etcd_server, cluster_name):
    return cluster_factory(
        3, {TOPIC: 2}, name=cluster_name, metadata={"etcd": [etcd_server.url], "lease_ttl_ms": 2000},
        replication_factor=3, min_insync_replicas=2,
    )  # fmt: skip


def committed_path(group: str, partition: int) -> str:
    return f"/v1/groups/{group}/topics/{TOPIC}/partitions/{partition}/offset"


def ask(cluster, method: str, path: str, body=None, *, skip=()):
    """``method path`` at any live broker, following 421 NOT_OWNER once; (status, body) of
    the last answer (503 while nobody can answer yet)."""
    answer = (503, {})
    for i in cluster.ports:
        if i in skip:
            continue
        try:
            status, got = http_json(method, cluster.url(i) + path, body, timeout=5)
            if status == 421:
                status, got = http_json(method, got["owner_url"] + path, body, timeout=5)
        except OSError:
            continue
        answer = (status, got)
        if status != 503:
            return answer
    return answer


def coordinator(cluster, skip=()) -> int | None:
    status, body = ask(cluster, "GET", f"/v1/groups/{GROUP}/members", skip=skip)
    return body["coordinator"] if status == 200 else None


def commits_on_disk(cluster, broker_id: int) -> list[tuple[int, int]]:
    """``(partition, offset)`` of every commit of GROUP in a broker's __consumer_offsets files."""
    directory = cluster.root / f"broker-{broker_id}" / f"{OFFSETS_TOPIC}-{partition_for(GROUP)}"
    found = []
    for seg in sorted(directory.glob("*.log")):
        for header, frame in iter_frames(seg.read_bytes()):
            for r in decode_records(OFFSETS_TOPIC, 0, header, frame):
                if r.key == b"c":
                    group, _, entries = msgpack.unpackb(r.value)
                    found += [(p, o) for t, p, o, _ in entries if group == GROUP and t == TOPIC]
    return found


async def produce(cluster, n: int) -> None:
    async with AsyncProducer(bootstrap=cluster.urls, acks="all") as producer:
        for i in range(n):
            await producer.send(TOPIC, f"v{i}".encode(), partition=i % 2)
        await producer.flush()


async def consume_until(consumer: AsyncConsumer, want: dict[int, int]) -> dict[int, list[int]]:
    """Offsets read per partition until each partition's position reaches ``want``."""
    seen: dict[int, list[int]] = {0: [], 1: []}
    async with asyncio.timeout(60):
        while any((seen[p][-1] + 1 if seen[p] else -1) < want[p] for p in want):
            for tp, recs in (await consumer.getmany(timeout_ms=200)).items():
                seen[tp.partition] += [r.offset for r in recs]
    return seen


async def group_commits_then_loses(cluster, victim_of) -> None:
    """A member consumes and commits; ``victim_of(coordinator)`` is SIGKILLed; the committed
    offsets are read back from the new coordinator, the old member is fenced, and a new
    member resumes exactly at the committed offsets."""
    await produce(cluster, RECORDS)
    first = AsyncConsumer(bootstrap=cluster.urls, group=GROUP, session_timeout_ms=SESSION_MS)
    first.subscribe([TOPIC])
    await first.start()
    try:
        await consume_until(first, {0: 20, 1: 20})
        acked = {TopicPartition(TOPIC, 0): 17, TopicPartition(TOPIC, 1): 20}
        await first.commit(acked)
        zombie = first._membership.commit_fields()
    finally:
        await first.close()
    old = await poll(lambda: asyncio.to_thread(coordinator, cluster), timeout=20)
    min_insync = 2
    holders = [i for i in cluster.ports if (0, 17) in commits_on_disk(cluster, i) and (1, 20) in commits_on_disk(cluster, i)]
    assert len(holders) >= min_insync, holders

    victim = victim_of(old)
    killed = time.monotonic()
    cluster.kill(victim)
    if victim == old:  # the coordinator moves to another replica of the offsets partition
        new = await poll(lambda: asyncio.to_thread(lambda: (c := coordinator(cluster, skip={victim})) != old and c), timeout=30)
        print(f"\ncoordinator {old} SIGKILLed: broker {new} coordinates after {time.monotonic() - killed:.2f} s")

    async def read_back():
        out = {}
        for p in (0, 1):
            status, body = await asyncio.to_thread(ask, cluster, "GET", committed_path(GROUP, p), skip={victim})
            if status != 200:
                return None
            out[TopicPartition(TOPIC, p)] = body["offset"]
        return out

    assert await poll(read_back, timeout=30) == acked
    # The member of before the failover is fenced: the new coordinator does not know it.
    status, body = await asyncio.to_thread(
        ask, cluster, "PUT", committed_path(GROUP, 0), {"offset": 5, **zombie}, skip={victim},
    )
    assert (status, body.get("code")) == (409, "UNKNOWN_MEMBER_ID"), body
    assert await read_back() == acked  # and nothing went back

    alive = [cluster.url(i) for i in cluster.ports if i != victim]
    second = AsyncConsumer(bootstrap=alive, group=GROUP, session_timeout_ms=SESSION_MS)
    second.subscribe([TOPIC])
    await second.start()
    try:
        seen = await consume_until(second, {0: RECORDS // 2, 1: RECORDS // 2})
        assert seen[0][0] == 17 and seen[1][0] == 20, (seen[0][:3], seen[1][:3])
        await second.commit({TopicPartition(TOPIC, 0): 25})
    finally:
        await second.close()
    assert (await read_back())[TopicPartition(TOPIC, 0)] == 25
    holders = [i for i in cluster.ports if i != victim and (0, 25) in commits_on_disk(cluster, i)]
    assert len(holders) >= min_insync, holders


async def test_the_group_survives_its_coordinators_sigkill(replicated):
    await group_commits_then_loses(replicated, lambda coordinator: coordinator)


async def test_commits_survive_the_sigkill_of_the_partitions_leader(replicated):
    _, view = http_json("GET", replicated.urls[0] + "/v1/cluster")
    leaders = {s["leader"] for s in view["partitions"][TOPIC]}

    def victim_of(coordinator: int) -> int:
        # a leader of the committed partitions that does not coordinate the group, if there is one
        return next((i for i in sorted(leaders) if i != coordinator), next(iter(leaders)))

    await group_commits_then_loses(replicated, victim_of)
