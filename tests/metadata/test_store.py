"""The metadata store against a real etcd: topology epochs, partition states changed only by
compare-and-swap, broker leases (renewed, lapsed, lost), elections after a broker's key expires."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from shoal.client.structs import TopicPartition
from shoal.router import hashing
from shoal.router.metadata.etcd import EtcdClient
from shoal.router.metadata.lease import BrokerIdInUse, BrokerLease
from shoal.router.metadata.partition import PartitionState, TransitionError
from shoal.router.metadata.store import MetadataStore, StaleTopology
from shoal.router.topology import Topology
from tests.harness import EtcdServer
from tests.metadata.helpers import poll

OR0 = TopicPartition("orders", 0)


def topology(cluster: str, epoch: int = 1, *, brokers=(1, 2, 3, 4), factor: int = 3, **topics) -> Topology:
    return Topology.from_dict({
        "cluster": cluster,
        "epoch": epoch,
        "defaults": {"replication_factor": factor, "min_insync_replicas": 1},
        "brokers": [{"id": i, "url": f"http://127.0.0.1:{9090 + i}"} for i in brokers],
        "topics": topics or {"orders": {"partitions": 4}, "logs": {"partitions": 1, "replication_factor": 2}},
    })  # fmt: skip


@pytest.fixture
def store(etcd, cluster_name):
    return MetadataStore(etcd, cluster_name)


async def test_topology_is_replaced_only_by_a_higher_epoch(store, cluster_name):
    assert await store.topology() is None
    first = topology(cluster_name, 1)
    assert await store.apply_topology(first) is True
    assert await store.apply_topology(first) is False  # the same again: nothing to do
    assert (await store.topology()).to_dict() == first.to_dict()
    with pytest.raises(StaleTopology, match="etcd holds epoch 1"):
        await store.apply_topology(topology(cluster_name, 1, other={"partitions": 1}))
    second = topology(cluster_name, 2, other={"partitions": 1})
    assert await store.apply_topology(second) is True
    with pytest.raises(StaleTopology, match="etcd holds epoch 2"):
        await store.apply_topology(first)
    assert (await store.topology()).epoch == 2


async def test_concurrent_applies_of_one_epoch_write_once(store, cluster_name, etcd):
    applied = await asyncio.gather(*(store.apply_topology(topology(cluster_name, 3)) for _ in range(5)))
    assert sorted(applied) == [False, False, False, False, True]
    kv = await etcd.get(store.prefix + b"topology")
    assert kv.version == 1


async def test_partitions_are_created_once_from_the_rendezvous_ranking(store, cluster_name):
    topo = topology(cluster_name)
    created = await store.create_partitions(topo)
    assert sorted(created) == [TopicPartition("logs", 0)] + [TopicPartition("orders", p) for p in range(4)]
    states, _ = await store.partitions()
    for tp, state in states.items():
        replicas = hashing.rank(tp.topic, tp.partition, [1, 2, 3, 4])[: topo.topics[tp.topic].replication_factor]
        assert state == PartitionState(tuple(replicas), replicas[0], 0, tuple(replicas))
        assert state.mod_revision > 0
    # Created again (a restart, a second broker): existing states are left alone.
    led = await store.elect_leader(OR0, states[OR0].replicas[1], set(states[OR0].replicas[1:]))
    assert await store.create_partitions(topo) == []
    assert await store.partition(OR0) == led


async def test_many_partitions_are_created_in_few_commits_and_racing_creators_write_each_once(store, cluster_name):
    """Thousands of partitions must not cost one etcd commit each (nor a second round for
    a peer that comes second): 64 per transaction, and a racing creator writes none twice."""
    topo = topology(cluster_name, many={"partitions": 300})
    before = (await store.partitions())[1]
    first, second = await asyncio.gather(store.create_partitions(topo), store.create_partitions(topo))
    everything = [TopicPartition("many", p) for p in range(300)]
    assert sorted(first + second) == sorted(everything)  # each created exactly once, by one of them
    states, after = await store.partitions()
    assert sorted(states) == sorted(everything)
    assert all(s.mod_revision and s.leader == s.replicas[0] for s in states.values())
    assert after - before <= 2 * 5 + 10  # 5 chunks each, a few conflicting chunks redone one by one at most
    assert await store.create_partitions(topo) == []
    assert (await store.partitions())[1] == after  # nothing left to write: no commit at all


async def test_racing_take_overs_of_many_partitions_take_few_commits(store, cluster_name):
    """A dead broker's hundreds of leaderships must not cost one etcd commit each: two
    candidates race for them 64 per transaction, and each partition is won exactly once."""
    topo = topology(cluster_name, brokers=(1, 2, 3), many={"partitions": 600})
    await store.create_partitions(topo)
    states, before = await store.partitions()
    orphans = {tp for tp, s in states.items() if s.leader == 1}
    assert len(orphans) > 150
    won2, won3 = await asyncio.gather(store.take_over(2, {2, 3}, topo), store.take_over(3, {2, 3}, topo))
    assert {tp for tp, _ in won2} | {tp for tp, _ in won3} == orphans
    assert not {tp for tp, _ in won2} & {tp for tp, _ in won3}  # exactly one winner each
    after_states, after = await store.partitions()
    for tp in orphans:
        s = after_states[tp]
        assert s.leader in (2, 3) and s.leader_epoch == states[tp].leader_epoch + 1 and 1 not in s.isr
    assert dict(won2 + won3) == {tp: after_states[tp] for tp in orphans}
    assert after - before <= 30, f"{after - before} commits to take over {len(orphans)} partitions"


async def test_compare_and_set_fails_on_a_stale_read(store, cluster_name):
    await store.create_partitions(topology(cluster_name))
    read = await store.partition(OR0)
    leader = read.leader
    follower = read.isr[-1]
    shrunk = await store.shrink_isr(OR0, read, follower)
    assert shrunk.isr == tuple(b for b in read.isr if b != follower) and shrunk.mod_revision > read.mod_revision
    # A change computed from the old read: refused, nothing written.
    with pytest.raises(TransitionError, match=f"changed since revision {read.mod_revision}"):
        await store.shrink_isr(OR0, read, read.isr[1])
    assert await store.compare_and_set(OR0, read, read) is None
    assert await store.partition(OR0) == shrunk
    expanded = await store.expand_isr(OR0, shrunk, follower)
    assert set(expanded.isr) == set(read.isr) and expanded.leader == leader


async def test_racing_candidates_elect_exactly_one_leader(store, cluster_name):
    await store.create_partitions(topology(cluster_name))
    before = await store.partition(OR0)
    live = set(before.replicas[1:])  # the leader's key expired

    async def try_elect(candidate):
        try:
            return await store.elect_leader(OR0, candidate, live)
        except TransitionError:
            return None

    results = await asyncio.gather(*(try_elect(c) for c in before.replicas[1:] for _ in range(3)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    after = await store.partition(OR0)
    assert after == winners[0]
    assert after.leader in live and after.leader_epoch == before.leader_epoch + 1
    assert before.leader not in after.isr


async def test_watch_sees_every_partition_change_in_order(store, cluster_name):
    _, revision = await store.partitions()
    changes = []

    async def consume():
        async for change in store.watch_partitions(revision + 1):
            changes.append(change)

    task = asyncio.create_task(consume())
    try:
        await store.create_partitions(topology(cluster_name, orders={"partitions": 1}))
        read = await store.partition(OR0)
        shrunk = await store.shrink_isr(OR0, read, read.isr[-1])
        elected = await store.elect_leader(OR0, shrunk.isr[1], set(shrunk.isr[1:]))
        await poll(lambda: _count_at_least(changes, 3))
    finally:
        task.cancel()
    assert [(c.partition, c.state) for c in changes] == [(OR0, read), (OR0, shrunk), (OR0, elected)]
    assert [c.state.mod_revision for c in changes] == [read.mod_revision, shrunk.mod_revision, elected.mod_revision]


async def _count_at_least(items, n):
    return len(items) >= n


async def test_broker_lease_registers_renews_and_revokes(store, etcd):
    lease = BrokerLease(etcd, store.prefix, 7, "http://127.0.0.1:9097", 1000)
    await lease.start()
    try:
        live, _ = await store.live_brokers()
        assert live == {7: "http://127.0.0.1:9097"}
        assert lease.valid()
        first = lease.valid_until
        # Renewals keep the key alive past its TTL.
        await poll(lambda: _later(lease, first + 1.0), timeout=10)
        assert 7 in (await store.live_brokers())[0]
        assert lease.expires_at - lease.valid_until == pytest.approx(lease.margin_s)
        with pytest.raises(BrokerIdInUse):
            await BrokerLease(etcd, store.prefix, 7, "http://other:1", 1000).start(wait_s=0.3)
    finally:
        await lease.stop()
    assert (await store.live_brokers())[0] == {}
    assert not lease.valid()


async def _later(lease, when):
    return lease.valid_until > when


async def test_a_restarted_broker_waits_for_its_old_key_to_expire(store, etcd, etcd_server, cluster_name):
    with lease_holder(etcd_server.url, cluster_name, 5, 1000) as holder:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    again = BrokerLease(etcd, store.prefix, 5, "http://127.0.0.1:9095", 1000)
    await again.start(wait_s=10)  # waits for the dead process's key to lapse
    assert (await etcd.get(again.key)).lease == again.lease_id
    await again.stop()


@contextlib.contextmanager
def lease_holder(url: str, cluster: str, broker_id: int, ttl_ms: int) -> Iterator[subprocess.Popen]:
    """Another process registered as ``broker_id`` and renewing its lease."""
    with subprocess.Popen(
        [sys.executable, "-m", "tests.metadata.lease_holder", url, cluster, str(broker_id), str(ttl_ms)],
        stdout=subprocess.PIPE, text=True,
    ) as proc:  # fmt: skip
        try:
            line = proc.stdout.readline()
            assert line.startswith("registered "), line
            yield proc
        finally:
            proc.kill()


async def test_killed_leader_is_replaced_by_a_live_isr_member(store, etcd, etcd_server, cluster_name):
    """SIGKILL the process holding broker 1's lease: its key lapses, broker 2 takes over its partitions."""
    topo = topology(cluster_name, brokers=(1, 2), factor=2, orders={"partitions": 6})
    await store.create_partitions(topo)
    states, _ = await store.partitions()
    led_by_1 = {tp for tp, s in states.items() if s.leader == 1}
    assert led_by_1 and led_by_1 != set(states)  # the ranking spreads leaders over both brokers
    mine = BrokerLease(etcd, store.prefix, 2, "http://127.0.0.1:9092", 1000)
    with lease_holder(etcd_server.url, cluster_name, 1, 1000) as holder:
        await mine.start()
        live, revision = await store.live_brokers()
        assert set(live) == {1, 2}
        assert await store.take_over(2, set(live), topo) == []  # broker 1 is live: nothing to take
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        async with asyncio.timeout(15), contextlib.aclosing(store.watch_brokers(revision + 1)) as changes:
            async for broker_id, alive in changes:
                if broker_id == 1 and not alive:
                    break
        live, _ = await store.live_brokers()
        assert set(live) == {2}
        won = dict(await store.take_over(2, set(live), topo))
        assert set(won) == led_by_1
        for tp, state in won.items():
            assert (state.leader, state.leader_epoch, state.isr) == (2, states[tp].leader_epoch + 1, (2,))
            assert await store.partition(tp) == state
        assert await store.take_over(2, set(live), topo) == []  # nothing left to take
        await mine.stop()


async def test_lease_is_reported_lost_before_etcd_can_expire_it(tmp_path, cluster_name):
    """SIGSTOP etcd: renewals hang, and the broker is told before its lease could lapse."""
    server = EtcdServer(tmp_path / "etcd")
    server.start()
    reasons = []
    try:
        async with EtcdClient([server.url], request_timeout_s=0.5) as etcd:
            lease = BrokerLease(etcd, b"/shoal/%s/" % cluster_name.encode(), 1, "http://h:1", 2000, on_lost=reasons.append)
            await lease.start()
            first = lease.valid_until
            await poll(lambda: _later(lease, first))  # a renewal went through
            server.signal(signal.SIGSTOP)
            await asyncio.wait_for(lease.lost.wait(), 10)
            lost_at = time.monotonic()
            # The earliest etcd could have expired the lease is the last renewal sent + TTL.
            assert lost_at < lease.expires_at
            assert reasons == [lease.lost_reason] and "not renewed" in reasons[0]
            assert not lease.valid()
            server.signal(signal.SIGCONT)
            await lease.stop()
    finally:
        server.signal(signal.SIGCONT)
        server.stop()


async def test_lease_lost_when_etcd_says_expired(store, etcd):
    lost = []
    lease = BrokerLease(etcd, store.prefix, 3, "http://h:3", 1000, on_lost=lost.append)
    await lease.start()
    await etcd.revoke(lease.lease_id)  # as if it had lapsed
    await asyncio.wait_for(lease.lost.wait(), 5)
    assert lost == ["etcd says it has expired"]
    assert await etcd.get(lease.key) is None
    await lease.stop()


async def test_reassign_all_writes_targets_once_and_guards_on_topology_and_drained(store, cluster_name):
    old = topology(cluster_name, 1, brokers=(1, 2, 3))
    await store.apply_topology(old)
    await store.create_partitions(old)
    new = topology(cluster_name, 2, brokers=(1, 2, 3, 4))
    with pytest.raises(StaleTopology):
        await store.reassign_all(new)  # not installed in etcd yet
    await store.apply_topology(new)
    changed = await store.reassign_all(new)
    states, _ = await store.partitions()
    for tp, state in states.items():
        target = tuple(hashing.rank(tp.topic, tp.partition, [1, 2, 3, 4])[: new.topics[tp.topic].replication_factor])
        assert state.target == target
        assert (tp in changed) == (4 in target) == (state.adding == (4,))
    assert changed and await store.reassign_all(new) == {}  # again: nothing to write
    # draining 1 moves its replicas by the ranking of 2, 3, 4 (what removing it would do)
    drained, revision = await store.drained()
    assert drained == set() and await store.set_drained({1}, revision)
    assert not await store.set_drained({2}, revision)  # a stale read of the drained set
    await store.reassign_all(new)
    states, _ = await store.partitions()
    for tp, state in states.items():
        assert state.target == tuple(hashing.rank(tp.topic, tp.partition, [2, 3, 4])[: new.topics[tp.topic].replication_factor])
        assert 1 not in state.target


async def test_a_move_completes_by_hand_off_and_finish(store, cluster_name):
    old = topology(cluster_name, 1, brokers=(1, 2, 3, 4), orders={"partitions": 1})
    await store.apply_topology(old)
    await store.create_partitions(old)
    state = await store.partition(OR0)
    assert await store.reassign_all(old) == {}  # the placement is right already
    await store.set_drained({state.leader}, 0)
    moving = (await store.reassign_all(old))[OR0]
    (added,) = moving.adding
    with pytest.raises(TransitionError, match="not in sync yet"):
        await store.finish_reassignment(OR0, moving)
    synced = await store.expand_isr(OR0, moving, added)
    with pytest.raises(TransitionError, match="changed since"):
        await store.hand_off(OR0, moving, synced.target[0])  # computed from a stale state
    handed = await store.hand_off(OR0, synced, synced.target[0])
    assert handed.leader == synced.target[0] and handed.leader_epoch == synced.leader_epoch + 1
    done = await store.finish_reassignment(OR0, handed)
    assert state.leader not in done.replicas and state.leader not in done.isr and not done.moving
