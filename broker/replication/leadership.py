"""Which broker leads each partition, decided in etcd, and who may answer for it here.

The broker's side of leader failover:

- **Elections.** Once registered, the broker reads the live brokers and then watches
  ``brokers/``; whenever a broker's key goes (its lease expired or was revoked), it
  runs ``MetadataStore.take_over``: for every partition it replicates whose leader is
  not live, it tries to become leader in one compare-and-swap (leader epoch + 1, only
  an in-sync replica unless the topic allows unclean elections). Of several candidates
  exactly one transaction succeeds; the others see the new state by their watch.
  The first pass after start-up waits one lease TTL: the brokers of a cluster starting
  together register within moments of each other, and a broker must not take over the
  partitions of a peer that has not registered *yet* (a leader that died while nobody
  watched has lapsed by then, and is taken over at that pass).
- **Answering.** A request for a partition is answered only by the leader named in the
  mirrored state, while that leader is live and, on the leader itself, while its lease
  is valid (``check``). Anyone else answers 421 ``NOT_OWNER`` naming the leader, or
  503 ``LEADER_NOT_AVAILABLE`` with ``Retry-After`` while there is none (an election
  is under way, the leader's key is gone, or this broker's lease is lost: a leader
  that cannot renew its lease stops acknowledging at once, before etcd can let another
  broker lead).
"""

from __future__ import annotations

import asyncio
import logging

from shoal.client.errors import FencedLeaderEpoch, LeaderNotAvailable, NotOwner
from shoal.client.structs import TopicPartition
from shoal.router.metadata.etcd import EtcdError
from shoal.router.metadata.partition import PartitionState

from .membership import RETRY_S, Membership

log = logging.getLogger(__name__)


class Leadership:
    """Runs this broker's part in elections and decides whether it may answer for a partition."""

    def __init__(self, membership: Membership):
        self.membership = membership
        self.live: set[int] = set()  # broker ids registered in etcd, as the watch last saw them
        self.elections = 0  # partitions this broker took over
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._run(), name="etcd-elections"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self) -> None:
        m = self.membership
        started = asyncio.get_running_loop().time()
        grace = m.topology.metadata.lease_ttl_ms / 1000  # let peers starting with us register
        first = True
        while True:
            await m.registered.wait()
            await m.applied.wait()
            try:
                live, revision = await m.store.live_brokers()
                self.live = set(live)
                if first:
                    first = False
                    self._tasks.append(asyncio.create_task(self._first_pass(started + grace)))
                else:
                    await self._take_over()
                async for broker, alive in m.store.watch_brokers(revision + 1):
                    if alive:
                        self.live.add(broker)
                    else:
                        self.live.discard(broker)
                        await self._take_over()
            except EtcdError as exc:
                log.warning("broker %d: the broker watch broke (%s); reading again", m.broker_id, exc)
                await asyncio.sleep(RETRY_S)

    async def _first_pass(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - asyncio.get_running_loop().time()))
        while True:
            try:
                return await self._take_over()
            except EtcdError as exc:
                log.warning("broker %d could not run elections (%s); retrying", self.membership.broker_id, exc)
                await asyncio.sleep(RETRY_S)

    async def _take_over(self) -> None:
        m = self.membership
        if not m.lease.valid():
            return
        before = {tp: s.leader for tp, s in m.states.items()}  # the watch may bring the new states meanwhile
        won = await m.store.take_over(m.broker_id, self.live, m.topology)
        for tp, state in won:
            m.states[tp] = state  # the watch brings it too; answer as leader without waiting for it
            log.info(
                "broker %d elected leader of %s/%d at epoch %d (leader %s was not live; isr %s)",
                m.broker_id, tp.topic, tp.partition, state.leader_epoch, before.get(tp, "?"), list(state.isr),
            )
        self.elections += len(won)
        if won:
            m.changed([tp for tp, _ in won])

    def check(self, tp: TopicPartition, leader_epoch: int | None = None) -> PartitionState:
        """The state of ``tp`` if this broker may answer for it as its leader.

        Raises:
            LeaderNotAvailable: no state yet, no live leader, or this broker's lease is not valid.
            NotOwner: another broker leads ``tp`` (named, with its URL).
            FencedLeaderEpoch: ``leader_epoch`` is given and is not the current one.
        """
        m = self.membership
        state = m.states.get(tp)
        where = f"{tp.topic}/{tp.partition}"
        if state is None or state.leader < 0 or (state.leader not in self.live and state.leader != m.broker_id):
            raise LeaderNotAvailable(
                f"{where} has no live leader right now (an election is under way)",
                topic=tp.topic, partition=tp.partition, retry_after=1,
            )
        if state.leader != m.broker_id:
            url = m.topology.broker(state.leader).url
            raise NotOwner(
                f"broker {m.broker_id} does not lead {where}; broker {state.leader} does, at leader epoch {state.leader_epoch}",
                owner_id=state.leader, owner_url=url, epoch=m.topology.epoch,
            )
        if not m.lease.valid():
            raise LeaderNotAvailable(
                f"broker {m.broker_id} cannot renew its etcd lease: it answers for {where} again once registered",
                topic=tp.topic, partition=tp.partition, retry_after=1,
            )
        if leader_epoch is not None and leader_epoch != state.leader_epoch:
            raise FencedLeaderEpoch(
                f"{where} is at leader epoch {state.leader_epoch}, the request carried {leader_epoch}",
                topic=tp.topic, partition=tp.partition, leader_epoch=state.leader_epoch,
            )
        return state
