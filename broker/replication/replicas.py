"""This broker's replicas of a replicated cluster: leaders serve, followers fetch.

``ReplicaManager.reconcile`` runs whenever a mirrored partition state changes (and at
start): for every partition whose state changed since it last ran (every partition at
start, after the mirror re-read everything, and after a topology change) that this
broker replicates it opens the log and makes it a
leader (the log's appends get the state's leader epoch, a ``LeaderState`` tracks the
followers) or a follower of the broker the state names (``fetcher.Fetcher``, one per
source broker, fetching many partitions in one long-poll). A periodic check on the
leader shrinks the ISR of lagging followers and expands it with caught-up ones.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp

from shoal.client.errors import NotEnoughReplicas
from shoal.client.structs import TopicPartition
from shoal.router.metadata.etcd import EtcdError
from shoal.router.metadata.partition import TransitionError

from .fetcher import Fetcher
from .leader_state import LeaderState
from .reassignment import Reassigner

if TYPE_CHECKING:
    from shoal.broker.storage import LogManager

    from .leadership import Leadership

log = logging.getLogger(__name__)

_YIELD_EVERY = 256  # states applied between two turns of the event loop


class ReplicaManager:
    """Applies partition states to the local logs and keeps the ISR of the partitions led here."""

    def __init__(self, leadership: Leadership, logs: LogManager, session: aiohttp.ClientSession):
        self.leadership = leadership
        self.membership = leadership.membership
        self.logs = logs
        self.session = session
        self.me = self.membership.broker_id
        self.leading: dict[TopicPartition, LeaderState] = {}
        self.fetchers: dict[int, Fetcher] = {}
        self.isr_shrinks = 0
        self.isr_expands = 0
        self.fetches = {"stream": 0, "http": 0}  # follower fetches answered here, by transport
        self.streams = 0  # followers' fetch streams open here
        self.states_applied = 0  # partition states reconcile looked at (work per change, not per partition)
        self._changed = asyncio.Event()
        self._dirty: set[TopicPartition] | None = None  # states changed since the last reconcile (None: all)
        self._follow: dict[int, dict[TopicPartition, int]] = {}  # source broker -> partition -> leader epoch
        self._reconciled_topology = None  # the topology the last reconcile applied
        self._tasks: list[asyncio.Task] = []
        self.reassigner = Reassigner(self)

    @property
    def lag_s(self) -> float:
        return self.membership.topology.metadata.replica_lag_time_max_ms / 1000

    def start(self) -> None:
        self.membership.on_partitions_change.append(self._note_changed)
        self._note_changed(None)
        self._tasks = [
            asyncio.create_task(self._reconcile_loop(), name="shoal-replica-roles"),
            asyncio.create_task(self._isr_loop(), name="shoal-isr"),
        ]
        self.reassigner.start()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.reassigner.stop()
        await asyncio.gather(*(f.stop() for f in self.fetchers.values()))

    async def _reconcile_loop(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                await self.reconcile()
            except Exception:
                self._dirty = None  # some of the changes may not have been applied: all again next time
                log.exception("broker %d could not apply the partition states", self.me)

    def _note_changed(self, partitions) -> None:
        if partitions is None:
            self._dirty = None
        elif self._dirty is not None:
            self._dirty.update(partitions)
        self._changed.set()

    async def reconcile(self) -> None:
        """Apply the states that changed since the last call (all of them the first time,
        after ``_note_changed(None)`` and after a topology change)."""
        topology = self.membership.topology
        states = self.membership.states
        dirty, self._dirty = self._dirty, set()
        if topology is not self._reconciled_topology:
            dirty = None
        self._reconciled_topology = topology
        if dirty is None:  # everything: rebuild what the fetchers follow from scratch
            todo = list(states)
            touched = set(self._follow)
            self._follow = {}
        else:
            todo = list(dirty)
            touched = set()
        self.states_applied += len(todo)
        for i, tp in enumerate(todo):
            if i and not i % _YIELD_EVERY:
                await asyncio.sleep(0)  # a full pass over 10,000 states must not hold the loop for seconds
            for source, follows in self._follow.items():  # at most a few brokers
                if follows.pop(tp, None) is not None:
                    touched.add(source)
            state = states.get(tp)
            if state is None or self.me not in state.replicas or tp.topic not in topology.topics:
                continue
            plog = await self.logs.get_or_create(tp.topic, tp.partition)
            plog.start_replicated(self.logs.checkpointed_high_watermark(tp))
            if state.leader == self.me:
                current = self.leading.get(tp)
                if current is None or current.leader_epoch != state.leader_epoch:
                    plog.leader_epoch = state.leader_epoch
                    lead = LeaderState(plog, state.leader_epoch, self.me)
                    lead.start(state.replicas)
                    self.leading[tp] = lead
                    log.info("broker %d leads %s/%d at epoch %d", self.me, tp.topic, tp.partition, state.leader_epoch)
                self.advance(tp)
            else:
                if self.leading.pop(tp, None) is not None:
                    log.info("broker %d no longer leads %s/%d: broker %d leads it at epoch %d",
                             self.me, tp.topic, tp.partition, state.leader, state.leader_epoch)
                if state.leader >= 0:
                    self._follow.setdefault(state.leader, {})[tp] = state.leader_epoch
                    touched.add(state.leader)
        for source in touched | (set(self._follow) - set(self.fetchers)):
            fetcher = self.fetchers.get(source)
            if fetcher is None:
                fetcher = self.fetchers[source] = Fetcher(self, source)
                fetcher.start()
            fetcher.assign(self._follow.get(source, {}))
        self.reassigner.poke(None if dirty is None else todo)

    def advance(self, tp: TopicPartition) -> None:
        """Move the high watermark of a partition led here to the least log end of its ISR."""
        lead = self.leading.get(tp)
        state = self.membership.states.get(tp)
        if lead is not None and state is not None and state.leader == self.me:
            lead.plog.advance_high_watermark(lead.high_watermark(state.isr))

    def follower_fetched(self, tp: TopicPartition, follower: int, fetch_offset: int) -> None:
        lead = self.leading[tp]
        lead.fetched(follower, fetch_offset)
        state = self.membership.states.get(tp)
        if state is not None and lead.lost_committed(follower, state.isr):
            log.warning(
                "broker %d: follower %d of %s/%d is back with log end %d, below the high watermark %d",
                self.me, follower, tp.topic, tp.partition, fetch_offset, lead.plog.high_watermark,
            )  # fmt: skip
            self._tasks.append(asyncio.create_task(self._change_isr(tp, "shrink", follower)))
            return
        self.advance(tp)
        if state is not None and follower in lead.caught_up(state.replicas, state.isr):
            self._tasks.append(asyncio.create_task(self._change_isr(tp, "expand", follower)))

    def check_insync(self, tp: TopicPartition) -> None:
        """Refuse an ``acks=all`` append up front when the ISR is below ``min_insync_replicas``."""
        state = self.membership.states[tp]
        needed = self.membership.topology.topic(tp.topic).min_insync_replicas
        if len(state.isr) < needed:
            raise NotEnoughReplicas(
                f"{tp.topic}/{tp.partition} has {len(state.isr)} in-sync replicas {list(state.isr)}, acks=all needs {needed}",
                topic=tp.topic, partition=tp.partition, isr=list(state.isr), min_insync=needed,
            )

    async def wait_replicated(self, tp: TopicPartition, plog, last_offset: int) -> None:
        """Wait until the high watermark covers ``last_offset`` (every ISR member has it)."""
        timeout_s = max(self.lag_s, 1.0)
        if not await plog.wait_for(last_offset, timeout_s):
            state = self.membership.states[tp]
            raise NotEnoughReplicas(
                f"{tp.topic}/{tp.partition}: the in-sync replicas {list(state.isr)} did not copy offset {last_offset} "
                f"within {timeout_s:g}s (it is written on the leader; a retry of an idempotent producer is not duplicated)",
                topic=tp.topic, partition=tp.partition, isr=list(state.isr),
                min_insync=self.membership.topology.topic(tp.topic).min_insync_replicas,
            )

    async def _isr_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lag_s / 2)
            self._tasks = [t for t in self._tasks if not t.done()]
            for tp, lead in list(self.leading.items()):
                state = self.membership.states.get(tp)
                if state is None or state.leader != self.me:
                    continue
                for follower in lead.lagging(state.isr, self.lag_s):
                    await self._change_isr(tp, "shrink", follower)

    async def _change_isr(self, tp: TopicPartition, how: str, follower: int) -> None:
        m = self.membership
        state = m.states.get(tp)
        if state is None or not m.lease.valid():
            return
        try:
            if how == "shrink":
                new = await m.store.shrink_isr(tp, state, follower)
                self.isr_shrinks += 1
            else:
                if follower in state.isr:
                    return
                new = await m.store.expand_isr(tp, state, follower)
                self.isr_expands += 1
        except (TransitionError, EtcdError) as exc:
            log.info("broker %d could not %s the ISR of %s/%d by %d: %s", self.me, how, tp.topic, tp.partition, follower, exc)
            return
        m.states[tp] = new
        why = "it caught up" if how == "expand" else f"it was behind for over {self.lag_s:g}s"
        log.info("broker %d: ISR %s of %s/%d at epoch %d: %s -> %s (broker %d: %s)", self.me, how, tp.topic, tp.partition,
                 new.leader_epoch, _ids(state.isr), _ids(new.isr), follower, why)
        self.advance(tp)


def _ids(brokers) -> str:
    return "[" + ",".join(map(str, brokers)) + "]"
