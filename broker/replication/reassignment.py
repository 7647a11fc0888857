"""A leader carries out the moves of its partitions; a dropped replica deletes its copy.

``shoal topology apply`` and ``shoal broker drain`` only write targets into etcd
(``MetadataStore.reassign_all``: ``adding``/``removing`` per partition). The rest is
done here, by whichever broker leads the partition, so a move resumes by itself after
any broker or the CLI is killed (a newly elected leader picks it up where it stands):

1. The added replicas follow the leader like any follower (``ReplicaManager.reconcile``)
   and join the ISR once caught up (the leader's ordinary ISR expand).
2. When every added replica is in sync and the leader is being removed, or the target's
   preferred leader is an in-sync live replica other than this one, the leader hands
   off (``hand_off``): it stops admitting appends, waits for the appends under way and
   for the successor to reach its log end, then writes leader = successor, leader epoch
   + 1 by compare-and-swap. Appends refused meanwhile get 503 ``LEADER_NOT_AVAILABLE``
   (retriable, retry after 50 ms); the successor's log ends where this one's does, so
   nothing acknowledged is lost and nothing is truncated.
3. Otherwise the leader finishes (``MetadataStore.finish_reassignment``): the removed
   replicas leave the replica set and the ISR.
4. A broker that the state no longer names as a replica deletes its copy of the
   partition (after a fetch round, so its fetcher has let go of the log).

``shoal cluster rebalance-leaders`` uses the same hand-off through
``POST /v1/topics/{topic}/partitions/{partition}/hand-off`` on the leader
(``handoff_api``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from shoal.client.errors import LeaderNotAvailable
from shoal.client.structs import TopicPartition
from shoal.router.metadata.etcd import EtcdError
from shoal.router.metadata.partition import PartitionState, TransitionError

from . import woken_or_due
from .fetcher import FETCH_WAIT_MS
from .throttle import Throttle

if TYPE_CHECKING:
    from .replicas import ReplicaManager

log = logging.getLogger(__name__)

HANDOFF_TIMEOUT_S = 5.0  # the successor must catch up within this, or the hand-off is abandoned
HW_WAIT_S = 0.5  # how long a hand-off waits for acks=all appends under way to be acknowledged
POLL_S = 0.005
RETRY_AFTER_S = 0.05  # what a refused append is told to wait
DRIVE_INTERVAL_S = 1.0  # moves are looked at again this often even when nothing changed
DELETE_DELAY_S = 2 * FETCH_WAIT_MS / 1000


class Reassigner:
    """Drives the reassignments of the partitions this broker leads."""

    def __init__(self, manager: ReplicaManager):
        self.manager = manager
        self.membership = manager.membership
        self.me = manager.me
        self.fenced: dict[TopicPartition, int] = {}  # partitions being handed off -> successor
        self.handoff_ms: list[float] = []  # how long each hand-off refused appends
        self.deleted = 0  # dropped replicas deleted here
        self.writes_in_flight: Callable[[TopicPartition], int] = lambda tp: 0  # set by the broker
        self.throttle = Throttle(self._adding)
        self._busy: set[TopicPartition] = set()
        self._wake = asyncio.Event()
        self._poked: set[TopicPartition] | None = set()  # looked at on the next wake (None: all)
        self._last_full = 0.0  # monotonic: when every partition was last looked at
        self._task: asyncio.Task | None = None
        self._jobs: set[asyncio.Task] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="shoal-reassign")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._jobs) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def poke(self, partitions: Collection[TopicPartition] | None = None) -> None:
        """The states of ``partitions`` (None: of any) changed: look at their moves again."""
        if partitions is None:
            self._poked = None
        elif self._poked is not None:
            self._poked.update(partitions)
        self._wake.set()

    def _adding(self, tp: TopicPartition, follower: int) -> bool:
        """Is ``follower`` an added replica still copying ``tp`` (the throttle's target)?"""
        state = self.membership.states.get(tp)
        return state is not None and follower in state.adding and follower not in state.isr

    def check_writable(self, tp: TopicPartition) -> None:
        """Refuse an append while ``tp`` is being handed to another broker."""
        successor = self.fenced.get(tp)
        if successor is not None:
            raise LeaderNotAvailable(
                f"{tp.topic}/{tp.partition} is being handed to broker {successor}",
                topic=tp.topic, partition=tp.partition, retry_after=RETRY_AFTER_S,
            )

    async def _run(self) -> None:
        while True:
            await woken_or_due(self._wake, DRIVE_INTERVAL_S)
            # Every DRIVE_INTERVAL_S, every partition; in between, only those whose state
            # changed (with 10,000 partitions a full look per change kept the loop busy).
            poked, self._poked = self._poked, set()
            if time.monotonic() - self._last_full >= DRIVE_INTERVAL_S:
                poked = None
            states = self.membership.states
            try:
                if poked is None:
                    self._last_full = time.monotonic()
                    looked = states.values()
                else:
                    looked = [states[tp] for tp in poked if tp in states]
                if any(s.moving and s.leader == self.me for s in looked):
                    self.throttle.set_rate(await self.membership.store.throttle())
                self._schedule(poked)
            except EtcdError as exc:
                log.info("broker %d could not read the reassignment throttle: %s", self.me, exc)
            except Exception:
                log.exception("broker %d could not look at the reassignments", self.me)

    def _schedule(self, partitions: Collection[TopicPartition] | None = None) -> None:
        states = self.membership.states
        topology = self.membership.topology
        items = list(states.items()) if partitions is None else [(tp, states[tp]) for tp in partitions if tp in states]
        for tp, state in items:
            if state.leader == self.me and state.moving and tp in self.manager.leading:
                self._spawn(tp, self._drive(tp))
        logs = self.manager.logs
        for tp in logs.partitions() if partitions is None else [tp for tp in partitions if logs.get(tp.topic, tp.partition)]:
            state = states.get(tp)
            if state is not None and self.me not in state.replicas and tp.topic in topology.topics:
                self._spawn(tp, self._delete(tp))

    def _spawn(self, tp: TopicPartition, job) -> None:
        if tp in self._busy:
            job.close()
            return
        self._busy.add(tp)
        task = asyncio.create_task(job)
        self._jobs.add(task)

        def done(t: asyncio.Task) -> None:
            self._jobs.discard(t)
            self._busy.discard(tp)
            if not t.cancelled() and t.exception() is not None:
                log.error("broker %d: reassigning %s failed", self.me, tp, exc_info=t.exception())

        task.add_done_callback(done)

    async def _drive(self, tp: TopicPartition) -> None:
        m = self.membership
        state = m.states.get(tp)
        if state is None or state.leader != self.me or not state.moving or not m.lease.valid():
            return
        if any(r not in state.isr for r in state.adding):
            return  # still copying: the ISR expand brings them in, and its state change wakes us
        successor = self.successor(state)
        try:
            if successor is not None:
                await self.hand_off(tp, successor)
            elif self.me not in state.removing:
                new = await m.store.finish_reassignment(tp, state)
                m.states[tp] = new
                log.warning(
                    "broker %d finished moving %s/%d: replicas %s, isr %s", self.me, tp.topic, tp.partition,
                    list(new.replicas), list(new.isr),
                )
                m.changed((tp,))
        except (TransitionError, EtcdError, TimeoutError) as exc:
            log.info("broker %d: the move of %s/%d waits (%s)", self.me, tp.topic, tp.partition, exc)

    def successor(self, state: PartitionState) -> int | None:
        """Whom this leader should hand ``state``'s partition to, if anyone: the target's
        preferred leader when it is in sync and live, else (when this leader is being
        removed) the first in-sync live replica of the target."""
        live = self.manager.leadership.live
        ready = [r for r in state.target if r in state.isr and r in live and r != self.me]
        if ready and ready[0] == state.target[0]:
            return ready[0]
        if self.me in state.removing and ready:
            return ready[0]
        return None

    async def hand_off(self, tp: TopicPartition, successor: int) -> PartitionState:
        """Give leadership of ``tp`` to ``successor`` without losing an acknowledged append.

        Raises:
            TransitionError: the state changed, or ``successor`` may not lead.
            TimeoutError: the successor did not catch up within HANDOFF_TIMEOUT_S.
            EtcdError: etcd did not answer.
        """
        m = self.membership
        lead = self.manager.leading.get(tp)
        if lead is None:
            raise TransitionError(f"broker {self.me} does not lead {tp.topic}/{tp.partition}")
        if tp in self.fenced:
            raise TransitionError(f"{tp.topic}/{tp.partition} is being handed to broker {self.fenced[tp]} already")
        self.fenced[tp] = successor
        started = time.monotonic()
        try:
            async with asyncio.timeout(HANDOFF_TIMEOUT_S):
                while self.writes_in_flight(tp):
                    await asyncio.sleep(POLL_S)
                end = lead.plog.log_end_offset
                while lead.follower_leo.get(successor, -1) < end:
                    await asyncio.sleep(POLL_S)
            # acks=all appends under way are answered once every ISR member has them
            hw_deadline = time.monotonic() + HW_WAIT_S
            while lead.plog.high_watermark < end and time.monotonic() < hw_deadline:
                await asyncio.sleep(POLL_S)
            state = m.states[tp]
            new = await m.store.hand_off(tp, state, successor)
            m.states[tp] = new  # answer NOT_OWNER naming the successor from now on
        finally:
            del self.fenced[tp]
        refused_ms = (time.monotonic() - started) * 1000
        self.handoff_ms.append(refused_ms)
        log.warning(
            "broker %d handed %s/%d to broker %d at leader epoch %d (appends refused for %.0f ms)",
            self.me, tp.topic, tp.partition, successor, new.leader_epoch, refused_ms,
        )
        m.changed((tp,))
        return new

    async def _delete(self, tp: TopicPartition) -> None:
        await asyncio.sleep(DELETE_DELAY_S)  # the fetcher lets go of the log first
        state = self.membership.states.get(tp)
        if state is None or self.me in state.replicas:
            return
        if await self.manager.logs.delete(tp.topic, tp.partition):
            self.deleted += 1
            log.warning("broker %d is no longer a replica of %s/%d: deleted its copy", self.me, tp.topic, tp.partition)

    def progress(self) -> list[dict]:
        """The moves of the partitions led here, with how far each added replica got
        (for ``GET /v1/cluster``'s ``reassignments``)."""
        out = []
        for tp, lead in sorted(self.manager.leading.items()):
            state = self.membership.states.get(tp)
            if state is None or state.leader != self.me or not state.moving:
                continue
            plog = lead.plog
            start, end, size = plog.log_start_offset, plog.log_end_offset, plog.size_bytes
            span = max(end - start, 1)
            replicas = {}
            for r in state.adding:
                leo = lead.follower_leo.get(r, start)
                replicas[str(r)] = {
                    "log_end_offset": leo,
                    "bytes_copied": size * max(leo - start, 0) // span if end > start else 0,
                    "in_sync": r in state.isr,
                }
            out.append({
                "topic": tp.topic, "partition": tp.partition, "leader": self.me,
                "replicas": list(state.replicas), "target": list(state.target),
                "adding": list(state.adding), "removing": list(state.removing),
                "log_start_offset": start, "log_end_offset": end, "bytes": size, "copies": replicas,
            })
        return out


class ReassignmentCollector:
    """Prometheus view of the moves led by this broker (registered by ``BrokerMetrics``)."""

    def __init__(self, broker):
        self._broker = broker

    def collect(self):
        replicas = self._broker.replicas
        if replicas is None:
            return []
        r = replicas.reassigner
        moving = GaugeMetricFamily("shoal_reassigning_partitions", "Partitions led here with a move under way")
        moving.add_metric([], len(r.progress()))
        sent = CounterMetricFamily("shoal_reassignment_bytes_sent", "Bytes sent to replicas being added")
        sent.add_metric([], r.throttle.sent)
        handoffs = CounterMetricFamily("shoal_leader_handoffs", "Controlled leader hand-offs done by this broker")
        handoffs.add_metric([], len(r.handoff_ms))
        refused = GaugeMetricFamily("shoal_leader_handoff_refused_seconds_max", "Longest time a hand-off refused appends")
        refused.add_metric([], max(r.handoff_ms, default=0.0) / 1000)
        deleted = CounterMetricFamily("shoal_dropped_replicas_deleted", "Copies deleted after leaving a replica set")
        deleted.add_metric([], r.deleted)
        return [moving, sent, handoffs, refused, deleted]
