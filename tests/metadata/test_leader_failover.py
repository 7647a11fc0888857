"""Leader failover on real brokers and a real etcd: only the leader in etcd answers for a
partition, a killed leader is replaced by an election (leader epoch + 1), a stale epoch
is fenced, and a leader frozen past its lease acknowledges nothing when it wakes."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import time
import urllib.request

import pytest

from shoal.client import AsyncProducer
from shoal.client.records import iter_frames
from tests.faults.checker import TOPIC, leader_answering, produce, state_of
from tests.metadata.helpers import poll


@pytest.fixture
def replicated(cluster_factory, etcd_server, cluster_name):
    """Three brokers, factor 3, on the session's etcd (2 s leases)."""
    return cluster_factory(
        3, {TOPIC: 2}, name=cluster_name, metadata={"etcd": [etcd_server.url], "lease_ttl_ms": 2000},
        replication_factor=3, min_insync_replicas=1,
    )  # fmt: skip


async def test_only_the_leader_answers_and_a_stale_epoch_is_fenced(replicated):
    state = await poll(lambda: leader_answering(replicated), timeout=20)
    leader = state["leader"]
    other = next(i for i in (1, 2, 3) if i != leader)
    status, body = produce(replicated.url(other), "x")
    assert (status, body["code"], body["owner_id"], body["owner_url"]) == (421, "NOT_OWNER", leader, replicated.url(leader))
    epoch = state["leader_epoch"]  # 0, unless a broker came up more than a lease after the first
    status, body = produce(replicated.url(leader), "x", leader_epoch=epoch + 7)
    assert (status, body["code"], body["leader_epoch"]) == (409, "FENCED_LEADER_EPOCH", epoch)
    status, body = produce(replicated.url(leader), "y", leader_epoch=epoch)
    assert status == 200, body


async def test_a_killed_leader_is_replaced_by_election(replicated):
    state = await poll(lambda: leader_answering(replicated), timeout=20)
    old = state["leader"]
    survivor = next(i for i in (1, 2, 3) if i != old)
    killed_at = time.monotonic()
    replicated.kill(old)

    async def new_leader():
        s = await asyncio.to_thread(state_of, replicated.url(survivor))
        return s if s and s["leader"] != old else None

    elected = await poll(new_leader, timeout=20, interval=0.02)
    failover_s = time.monotonic() - killed_at
    assert elected["leader_epoch"] == 1 and elected["leader"] in elected["isr"] and old not in elected["isr"]
    print(f"\nfailover after SIGKILL of broker {old}: new leader {elected['leader']} in etcd after {failover_s:.2f} s")
    status, ack = await asyncio.to_thread(produce, replicated.url(elected["leader"]), "after")
    assert status == 200, ack
    [(h, _)] = list(iter_frames(fetch_raw(replicated.url(elected["leader"]), ack["base_offset"])))
    assert h.leader_epoch == 1  # written in the new epoch
    replicated.start(old)  # back as a follower: it names the new leader
    status, body = await asyncio.to_thread(produce, replicated.url(old), "stale")
    assert (status, body["code"]) in ((421, "NOT_OWNER"), (503, "LEADER_NOT_AVAILABLE"))
    if status == 421:
        assert body["owner_id"] == elected["leader"]


def fetch_raw(url: str, offset: int) -> bytes:
    """The stored frames of partition 0 from ``offset`` on, as the binary fetch returns them."""
    req = urllib.request.Request(
        f"{url}/v1/topics/{TOPIC}/partitions/0/records?offset={offset}", headers={"Accept": "application/vnd.shoal.batch"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read()


async def test_a_leader_frozen_past_its_lease_acknowledges_nothing(replicated):
    state = await poll(lambda: leader_answering(replicated), timeout=20)
    zombie = state["leader"]
    proc = replicated.procs[zombie]
    proc.send_signal(signal.SIGSTOP)
    try:
        survivor = next(i for i in (1, 2, 3) if i != zombie)

        async def new_leader():
            s = await asyncio.to_thread(state_of, replicated.url(survivor))
            return s if s and s["leader"] != zombie else None

        await poll(new_leader, timeout=20, interval=0.05)
        # A produce sent to the zombie while it sleeps: the kernel accepts the connection and
        # buffers the request; the process reads it when it wakes.
        conn = http.client.HTTPConnection("127.0.0.1", replicated.ports[zombie], timeout=10)
        body = json.dumps({"records": [{"value": "zombie"}]})
        conn.request("POST", f"/v1/topics/{TOPIC}/partitions/0/records", body, {"Content-Type": "application/json"})
    finally:
        proc.send_signal(signal.SIGCONT)
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    assert resp.status != 200 and answer["code"] in ("LEADER_NOT_AVAILABLE", "NOT_OWNER"), answer


async def test_a_leader_that_cannot_renew_its_lease_stops_acknowledging(replicated, etcd_server):
    """etcd frozen: nobody can elect anyone, yet the leader refuses once its lease may lapse."""
    state = await poll(lambda: leader_answering(replicated), timeout=20)
    url = replicated.url(state["leader"])

    async def refused():
        # acks=1: an acks=all append admitted just before the lease lapsed could end waiting
        # for followers that lost theirs too (NOT_ENOUGH_REPLICAS); the lease check is the point
        status, body = await asyncio.to_thread(produce, url, "while etcd sleeps", acks=1)
        return body if status == 503 else None

    etcd_server.signal(signal.SIGSTOP)
    try:
        body = await poll(refused, timeout=10)
    finally:
        etcd_server.signal(signal.SIGCONT)
    assert body["code"] == "LEADER_NOT_AVAILABLE" and "lease" in body["detail"]
    assert int(body["retry_after"]) >= 1
    await poll(lambda: leader_answering(replicated), timeout=20)  # registered again: it answers again


async def test_a_producer_whose_leader_froze_moves_on_to_the_new_leader(replicated):
    """A leader that accepts connections but never answers (SIGSTOP): the producer's request
    times out, and it must re-read the cluster from another broker, not retry the frozen one
    until its delivery timeout."""
    state = await poll(lambda: leader_answering(replicated), timeout=20)
    frozen = state["leader"]
    async with AsyncProducer(replicated.urls, request_timeout_ms=2000, delivery_timeout_ms=60_000,
                             retry_backoff_ms=50) as producer:  # fmt: skip
        before = await producer.send_and_wait(TOPIC, b"before", partition=0)
        proc = replicated.procs[frozen]
        proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            after = await asyncio.wait_for(producer.send_and_wait(TOPIC, b"after", partition=0), 45)
            took = time.monotonic() - started
        finally:
            proc.send_signal(signal.SIGCONT)
    assert after.offset > before.offset
    print(f"\nleader {frozen} frozen: acknowledged by the new leader after {took:.2f} s")
