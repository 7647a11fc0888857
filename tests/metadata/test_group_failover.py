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

from shoal.broker.replication.offsets_topic import partition_for
from shoal.router.internal_topics import OFFSETS_TOPIC
from shoal.client import AsyncConsumer, AsyncProducer
from shoal.client.records import decode_records, iter_frames
from shoal.client.structs import TopicPartition
from tests.harness import http_json
from tests.metadata.helpers import poll, replicated_cluster

TOPIC = "t"
GROUP = "billing"
SESSION_MS = 2000
RECORDS = 60
SEGMENT_BYTES = 1024  # also the offsets topic's: a snapshot every ~6 commits, segments deleted before them


@pytest.fixture
def replicated(cluster_factory, etcd_server, cluster_name):
    return replicated_cluster(cluster_factory, etcd_server.url, cluster_name, 3, {TOPIC: 2}, segment_bytes=SEGMENT_BYTES)


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


def offsets_dir(cluster, broker_id: int):
    return cluster.root / f"broker-{broker_id}" / f"{OFFSETS_TOPIC}-{partition_for(GROUP)}"


def committed_on_disk(cluster, broker_id: int) -> dict[TopicPartition, int]:
    """GROUP's committed offsets as a broker's __consumer_offsets segment files hold them:
    commits (``c``) replayed over the latest snapshot (``s``)."""
    state: dict = {}
    for seg in sorted(offsets_dir(cluster, broker_id).glob("*.log")):
        for header, frame in iter_frames(seg.read_bytes()):
            for r in decode_records(OFFSETS_TOPIC, 0, header, frame):
                value = msgpack.unpackb(r.value)
                if r.key == b"s":
                    state = {(g, t, p): o for g, _, entries in value for t, p, o, _ in entries}
                elif r.key == b"c":
                    state.update(((value[0], t, p), o) for t, p, o, _ in value[2])
    return {TopicPartition(t, p): o for (g, t, p), o in state.items() if g == GROUP}


def on_replicas(cluster, offsets: dict, skip=()) -> list[int]:
    """The brokers whose files hold ``offsets`` as GROUP's committed offsets."""
    return [i for i in cluster.ports if i not in skip and committed_on_disk(cluster, i) == offsets]


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
        for k in range(1, 21):  # many commits: snapshots, and segments deleted before them
            await first.commit({TopicPartition(TOPIC, 0): min(k, 17), TopicPartition(TOPIC, 1): k})
        acked = {TopicPartition(TOPIC, 0): 17, TopicPartition(TOPIC, 1): 20}
        zombie = first._membership.commit_fields()
    finally:
        await first.close()
    old = await poll(lambda: asyncio.to_thread(coordinator, cluster), timeout=20)
    min_insync = 2
    assert len(on_replicas(cluster, acked)) >= min_insync
    # every replica deletes what lies before its latest snapshot (CLEANUP_S)
    trimmed = lambda: all(min(int(f.stem) for f in offsets_dir(cluster, i).glob("*.log")) > 0 for i in cluster.ports)  # noqa: E731
    await poll(lambda: asyncio.to_thread(trimmed), timeout=20, interval=0.5)

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
    bad = {"offsets": [{"topic": TOPIC, "partition": 0, "offset": -1}]}
    status, body = await asyncio.to_thread(ask, cluster, "POST", f"/v1/groups/{GROUP}/offsets", bad, skip={victim})
    assert (status, body.get("code")) == (400, "INVALID_REQUEST"), body
    assert await read_back() == acked

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
    now = {TopicPartition(TOPIC, 0): 25, TopicPartition(TOPIC, 1): 20}
    assert len(on_replicas(cluster, now, skip={victim})) >= min_insync


async def test_the_group_survives_its_coordinators_sigkill(replicated):
    await group_commits_then_loses(replicated, lambda coordinator: coordinator)


async def test_commits_survive_the_sigkill_of_the_partitions_leader(replicated):
    def victim_of(coordinator: int) -> int:
        """A leader of the committed partitions that does not coordinate the group (there is
        one unless one broker leads both partitions)."""
        _, view = http_json("GET", replicated.urls[0] + "/v1/cluster")
        leaders = sorted({s["leader"] for s in view["partitions"][TOPIC]})
        return next((i for i in leaders if i != coordinator), leaders[0])

    await group_commits_then_loses(replicated, victim_of)
