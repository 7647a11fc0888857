"""A Hypothesis state machine of one partition's leadership and ISR, run against the real
store and a real etcd: brokers die and come back, candidates race for leadership,
the leader shrinks and expands the ISR, and writes computed from stale reads are tried.

The model is the specification (docs/replication.md); after every step the state in
etcd must equal it, and the invariants below must hold.
"""

from __future__ import annotations

import asyncio
import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from shoal.client.structs import TopicPartition
from shoal.router.metadata.etcd import EtcdClient, put_op
from shoal.router.metadata.partition import PartitionState, TransitionError, initial_state
from shoal.router.metadata.store import MetadataStore

REPLICAS = (1, 2, 3)
TP = TopicPartition("t", 0)
brokers = st.sampled_from(REPLICAS + (4,))  # 4 is no replica


class ElectionMachine(RuleBasedStateMachine):
    etcd_url = ""  # set by the test from the session's etcd

    snapshots = Bundle("snapshots")

    def __init__(self):
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.etcd = EtcdClient([self.etcd_url])
        self.run(self.etcd.start())
        self.store = MetadataStore(self.etcd, f"sm-{uuid.uuid4().hex[:10]}")
        state = initial_state(REPLICAS)
        self.run(self.etcd.txn([], [put_op(self.store._key(TP), state.to_json())]))
        # The model: who is live, and the partition as the rules say it must be.
        self.live = set(REPLICAS)
        self.leader, self.epoch, self.isr = state.leader, 0, set(REPLICAS)

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def teardown(self):
        self.run(self.etcd.close())
        self.loop.close()

    def read(self) -> PartitionState:
        return self.run(self.store.partition(TP))

    @rule(target=snapshots)
    def snapshot(self):
        return self.read()

    @rule(broker=st.sampled_from(REPLICAS))
    def broker_dies(self, broker):
        self.live.discard(broker)

    @rule(broker=st.sampled_from(REPLICAS))
    def broker_returns(self, broker):
        self.live.add(broker)

    @rule(candidate=brokers, unclean=st.booleans())
    def elect(self, candidate, unclean):
        allowed = (
            self.leader not in self.live
            and candidate in self.live
            and candidate in REPLICAS
            and (candidate in self.isr or (unclean and not self.isr & self.live))
        )
        try:
            state = self.run(self.store.elect_leader(TP, candidate, set(self.live), unclean=unclean))
        except TransitionError:
            assert not allowed, f"broker {candidate} was refused leadership it may take"
            return
        assert allowed, f"broker {candidate} took leadership it may not take (unclean={unclean})"
        if candidate in self.isr:
            self.isr = {b for b in self.isr if b == candidate or (b != self.leader and b in self.live)}
        else:
            self.isr = {candidate}
        self.leader, self.epoch = candidate, self.epoch + 1
        assert (state.leader, state.leader_epoch, set(state.isr)) == (self.leader, self.epoch, self.isr)

    @rule(a=st.sampled_from(REPLICAS), b=st.sampled_from(REPLICAS))
    def racing_elections(self, a, b):
        if self.leader in self.live:
            return

        async def both():
            return await asyncio.gather(
                *(self.store.elect_leader(TP, c, set(self.live)) for c in (a, b)), return_exceptions=True
            )

        results = self.run(both())
        winners = [r for r in results if isinstance(r, PartitionState)]
        assert all(isinstance(r, (PartitionState, TransitionError)) for r in results), results
        assert len(winners) <= 1, f"two leaders elected at once: {winners}"
        if winners:
            new = winners[0]
            self.isr = {x for x in self.isr if x == new.leader or (x != self.leader and x in self.live)}
            self.leader, self.epoch = new.leader, self.epoch + 1

    @rule(follower=brokers, expand=st.booleans())
    def isr_change(self, follower, expand):
        current = self.read()
        if expand:
            allowed = follower in REPLICAS and follower not in self.isr
            change = self.store.expand_isr
        else:
            allowed = follower != self.leader and follower in self.isr
            change = self.store.shrink_isr
        try:
            self.run(change(TP, current, follower))
        except TransitionError:
            assert not allowed
            return
        assert allowed
        self.isr = self.isr | {follower} if expand else self.isr - {follower}

    @rule(old=snapshots, follower=brokers, expand=st.booleans())
    def change_from_a_stale_read(self, old, follower, expand):
        before = self.read()
        change = self.store.expand_isr if expand else self.store.shrink_isr
        try:
            self.run(change(TP, old, follower))
        except TransitionError:
            assert self.read().mod_revision == before.mod_revision  # nothing written
            return
        # Only a read that is still current may write.
        assert old.mod_revision == before.mod_revision
        self.isr = self.isr | {follower} if expand else self.isr - {follower}

    @invariant()
    def etcd_holds_the_model(self):
        state = self.read()
        assert (state.leader, state.leader_epoch, set(state.isr)) == (self.leader, self.epoch, self.isr)
        assert state.replicas == REPLICAS
        assert state.leader in state.isr, "the leader is always in its ISR"
        assert set(state.isr) <= set(REPLICAS) and len(set(state.isr)) == len(state.isr)


def test_election_and_isr_transitions(etcd_server):
    ElectionMachine.etcd_url = etcd_server.url
    machine = ElectionMachine.TestCase
    machine.settings = settings(
        max_examples=30, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    machine("runTest").runTest()
