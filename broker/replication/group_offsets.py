"""Group coordination and committed offsets of a replicated cluster, kept in ``__consumer_offsets``.

The coordinator of a group is the leader of its offsets partition (``offsets_topic``).
When this broker starts leading such a partition (at a leader epoch) it *loads* it:
waits until the high watermark reaches the log end it found (every in-sync replica
has what it has), replays the records from the log start, and only then answers for
the partition's groups with a fresh ``GroupCoordinator`` that holds assignments back
for a session (members of the previous coordinator let go first, see
``broker/coordinator.py``). Until loaded it answers 503 ``LEADER_NOT_AVAILABLE``.
A coordinator that finds the log empty is the partition's first (any coordinator
before it would have left a record): it appends an ``f`` mark with ``acks=all`` and
holds nothing back.

A commit is fenced by that coordinator (member, generation, held partitions), then
appended with ``acks=all`` through the normal replicated write path and acknowledged
once the high watermark covers it and this broker still leads at the epoch it loaded.
The in-memory state follows the log below the high watermark (``_catch_up``), in log
order, so what a read shows is on every in-sync replica. Generations continue from the
highest one the log holds (commits carry it).

Once half a segment of records followed the last snapshot, the coordinator appends a
snapshot of the partition's whole state; every replica (leader or follower) deletes its segments that lie wholly
before the latest snapshot below its high watermark.

A broker that does not coordinate a group forwards to the one that does over HTTP:
``POST /v1/groups/{group}/offsets`` (commit) and ``GET /v1/groups/{group}/offsets``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from shoal.broker.coordinator import GroupCoordinator
from shoal.client.errors import BrokerUnavailable, LeaderNotAvailable, NotOwner, ShoalError
from shoal.client.structs import OffsetAndMetadata, TopicPartition

from shoal.router.internal_topics import OFFSETS_TOPIC, PARTITIONS, offsets_topic_config

from . import woken_or_due
from .offsets_topic import COMMIT, DELETE, FIRST, SNAPSHOT, OffsetsState, encode, partition_for, records

if TYPE_CHECKING:
    from shoal.broker.broker import Broker

log = logging.getLogger(__name__)

RECONCILE_S = 0.5  # also look at the roles this often (the replica manager applies them after us)
CLEANUP_S = 2.0  # how often replicas look for snapshots and delete what lies before


@dataclass(eq=False)
class Slot:
    """An offsets partition this broker leads at ``leader_epoch``."""

    partition: int
    leader_epoch: int
    coordinator: GroupCoordinator
    state: OffsetsState = field(default_factory=OffsetsState)
    applied: int = 0  # the state holds every record below this offset
    ready: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # appends; a snapshot must see all before it
    snapshotting: bool = False
    loader: asyncio.Task | None = None


class GroupOffsets:
    """The coordinators of the offsets partitions this broker leads, and forwarding to the others."""

    def __init__(self, broker: Broker):
        self.broker = broker
        self.slots: dict[int, Slot] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._snapshots: dict[int, tuple[int, int]] = {}  # partition -> (scanned up to, latest snapshot offset)

    def start(self) -> None:
        self.broker.membership.on_change.append(self._changed.set)
        self._tasks = [
            asyncio.create_task(self._reconcile_loop(), name="shoal-group-coordinators"),
            asyncio.create_task(self._cleanup_loop(), name="shoal-offsets-cleanup"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for p in list(self.slots):
            await self._drop(p)

    # --- roles ------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while True:
            await woken_or_due(self._changed, RECONCILE_S)
            try:
                await self.reconcile()
            except Exception:
                log.exception("broker %d could not apply the offsets partitions' roles", self.broker.broker_id)

    def _led_epoch(self, p: int) -> int | None:
        """The leader epoch at which this broker leads offsets partition ``p`` (its log in it), or None."""
        tp = TopicPartition(OFFSETS_TOPIC, p)
        state = self.broker.membership.states.get(tp)
        lead = self.broker.replicas.leading.get(tp)
        if state is None or lead is None or state.leader != self.broker.broker_id or lead.leader_epoch != state.leader_epoch:
            return None
        return state.leader_epoch

    async def reconcile(self) -> None:
        for p in range(PARTITIONS):
            epoch = self._led_epoch(p)
            slot = self.slots.get(p)
            if slot is not None and slot.leader_epoch != epoch:
                await self._drop(p)
                slot = None
            if slot is None and epoch is not None:
                slot = self.slots[p] = Slot(p, epoch, self._new_coordinator(p))
                slot.loader = asyncio.create_task(self._load(slot), name=f"shoal-load-offsets-{p}")

    def _new_coordinator(self, p: int) -> GroupCoordinator:
        broker = self.broker

        def floor(group: str) -> int:
            slot = self.slots.get(p)
            return slot.state.generations.get(group, 0) if slot is not None else 0

        return GroupCoordinator(
            broker._partition_counts, settings=lambda: broker.topology.settings, generation_floor=floor
        )

    async def _drop(self, p: int) -> None:
        slot = self.slots.pop(p)
        if slot.loader is not None:
            slot.loader.cancel()
            await asyncio.gather(slot.loader, return_exceptions=True)
        await slot.coordinator.stop()
        log.info("broker %d no longer coordinates the groups of %s/%d", self.broker.broker_id, OFFSETS_TOPIC, p)

    async def _load(self, slot: Slot) -> None:
        plog = self.broker.logs.get(OFFSETS_TOPIC, slot.partition)
        end = plog.log_end_offset
        started = asyncio.get_running_loop().time()
        while plog.high_watermark < end:
            await plog.wait_for(end - 1, 1.0)
        self._catch_up(slot)
        first = end == 0
        while first:  # the mark that a coordinator was here (see the module doc)
            try:
                await self._append(slot, FIRST, [self.broker.broker_id, slot.leader_epoch])
                break
            except ShoalError as exc:
                log.info("%s/%d: the first coordinator's mark is not replicated yet (%s)", OFFSETS_TOPIC, slot.partition, exc)
                await asyncio.sleep(1.0)
        await slot.coordinator.start(took_over=not first)
        slot.ready = True
        log.warning(
            "broker %d coordinates the groups of %s/%d at leader epoch %d: loaded %d group(s) up to offset %d in %.2fs",
            self.broker.broker_id, OFFSETS_TOPIC, slot.partition, slot.leader_epoch, len(slot.state.groups),
            slot.applied, asyncio.get_running_loop().time() - started,
        )

    def _catch_up(self, slot: Slot) -> None:
        """Apply the records below the high watermark that the state lacks."""
        plog = self.broker.logs.get(OFFSETS_TOPIC, slot.partition)
        hw = plog.high_watermark
        for _, key, value, size in records(plog, slot.applied, hw):
            slot.state.apply(key, value, size)
        slot.applied = max(slot.applied, hw)

    # --- answering ----------------------------------------------------------------------

    def coordinator_id(self, group: str) -> int:
        """The broker id that leads ``group``'s offsets partition (maybe not live); -1 when none."""
        state = self.broker.membership.states.get(TopicPartition(OFFSETS_TOPIC, partition_for(group)))
        return state.leader if state is not None else -1

    def preferred(self, group: str) -> int:
        """The preferred leader of ``group``'s offsets partition."""
        return self.broker.membership.topology.preferred_leader(OFFSETS_TOPIC, partition_for(group))

    def slot(self, group: str) -> Slot:
        """The loaded slot of ``group`` on this broker.

        Raises:
            NotOwner: another broker coordinates it (named).
            LeaderNotAvailable: no live coordinator, or this one is still loading.
        """
        p = partition_for(group)
        self.broker.leadership.check(TopicPartition(OFFSETS_TOPIC, p))  # NOT_OWNER naming the leader, or 503
        slot = self.slots.get(p)
        if slot is None or not slot.ready:
            raise LeaderNotAvailable(
                f"broker {self.broker.broker_id} is loading the groups of {OFFSETS_TOPIC}/{p} (group {group})",
                topic=OFFSETS_TOPIC, partition=p, retry_after=1,
            )
        return slot

    def coordinator(self, group: str) -> GroupCoordinator:
        return self.slot(group).coordinator

    def offsets(self, group: str) -> dict[TopicPartition, OffsetAndMetadata]:
        """The group's committed offsets, here at its coordinator (raises as ``slot``)."""
        slot = self.slot(group)
        self._catch_up(slot)
        return dict(slot.state.groups.get(group, {}))

    def local_groups(self) -> dict[str, dict[TopicPartition, OffsetAndMetadata]]:
        """Every group with offsets in the partitions coordinated (and loaded) here."""
        out = {}
        for slot in self.slots.values():
            if slot.ready:
                self._catch_up(slot)
                out.update((g, dict(o)) for g, o in slot.state.groups.items())
        return out

    async def commit(
        self, group: str, member_id: str | None, generation: int | None, entries: list[tuple[str, int, int, str]]
    ) -> None:
        """Fence, then append with acks=all; returns once the commit is on every in-sync replica."""
        slot = self.slot(group)
        slot.coordinator.fence(group, member_id, generation, [TopicPartition(t, p) for t, p, _, _ in entries])
        known = slot.coordinator.groups.get(group)
        gen = known.generation if known is not None else slot.state.generations.get(group, 0)
        await self._append(slot, COMMIT, [group, gen, [[t, p, o, m or ""] for t, p, o, m in entries]])

    async def delete(self, group: str) -> None:
        await self._append(self.slot(group), DELETE, [group, None])

    async def _append(self, slot: Slot, key: bytes, value) -> None:
        broker = self.broker
        tp = TopicPartition(OFFSETS_TOPIC, slot.partition)
        broker.replicas.check_insync(tp)
        async with slot.lock, broker.writing(*tp) as plog:
            result = await plog.append(encode(key, value))
        broker.replicas.advance(tp)
        await broker.replicas.wait_replicated(tp, plog, result.last_offset)
        broker.leadership.check(tp, slot.leader_epoch)  # a deposed coordinator acknowledges nothing
        if self.slots.get(slot.partition) is slot:
            self._catch_up(slot)
            if slot.state.due(offsets_topic_config(broker.topology).segment_bytes) and not slot.snapshotting:
                slot.snapshotting = True
                self._tasks = [t for t in self._tasks if not t.done()]
                self._tasks.append(asyncio.create_task(self._snapshot(slot)))

    async def _snapshot(self, slot: Slot) -> None:
        """Append the whole state as of the log end (what is below the high watermark,
        plus what was appended above it), so replaying from the snapshot on loses nothing."""
        broker = self.broker
        tp = TopicPartition(OFFSETS_TOPIC, slot.partition)
        try:
            async with slot.lock, broker.writing(*tp) as plog:
                state = slot.state.copy()
                for _, key, value, size in records(plog, slot.applied, plog.log_end_offset, to_log_end=True):
                    state.apply(key, value, size)
                result = await plog.append(encode(SNAPSHOT, state.snapshot()))
            broker.replicas.advance(tp)
            await broker.replicas.wait_replicated(tp, plog, result.last_offset)
            log.info("%s/%d: snapshot of %d group(s) at offset %d", *tp, len(state.groups), result.base_offset)
        except ShoalError as exc:
            log.info("%s/%d: snapshot not written (%s); trying again after more commits", *tp, exc)
        finally:
            slot.snapshotting = False

    # --- bounding the topic ---------------------------------------------------------------

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(CLEANUP_S)
            try:
                await self.cleanup()
            except Exception:
                log.exception("broker %d could not clean up %s", self.broker.broker_id, OFFSETS_TOPIC)

    async def cleanup(self) -> int:
        """On every replica here: delete the segments wholly before the latest snapshot
        below the high watermark. Returns how many segments were deleted."""
        deleted = 0
        for p in range(PARTITIONS):
            plog = self.broker.logs.get(OFFSETS_TOPIC, p)
            if plog is None:
                continue
            scanned, latest = self._snapshots.get(p, (0, -1))
            hw = plog.high_watermark
            if scanned > hw:  # truncated below what was scanned: scan again
                scanned, latest = 0, -1
            for offset, key, _, _ in records(plog, scanned, hw):
                if key == SNAPSHOT:
                    latest = offset
            self._snapshots[p] = (hw, latest)
            if latest > plog.log_start_offset:
                deleted += await plog.delete_segments_before(latest)
        return deleted

    # --- forwarding ---------------------------------------------------------------------

    async def commit_at_coordinator(
        self, group: str, member_id: str | None, generation: int | None, entries: list[tuple[str, int, int, str]],
        authorization: str | None,
    ) -> None:
        """``commit`` here if this broker coordinates ``group``, else at the broker that does."""
        if self.coordinator_id(group) == self.broker.broker_id:
            return await self.commit(group, member_id, generation, entries)
        body = {"member_id": member_id, "generation": generation,
                "offsets": [{"topic": t, "partition": p, "offset": o, "metadata": m} for t, p, o, m in entries]}
        await self.forward("POST", group, body, authorization)

    async def offsets_at_coordinator(self, group: str, authorization: str | None) -> dict[TopicPartition, OffsetAndMetadata]:
        """``offsets`` here if this broker coordinates ``group``, else from the broker that does."""
        if self.coordinator_id(group) == self.broker.broker_id:
            return self.offsets(group)
        answer = await self.forward("GET", group, None, authorization)
        return {TopicPartition(r["topic"], r["partition"]): OffsetAndMetadata(r["offset"], r.get("metadata") or "")
                for r in answer["offsets"]}

    async def forward(self, method: str, group: str, body: dict | None, authorization: str | None) -> dict:
        """Send a request to ``group``'s coordinator (another broker); its answer, or its error."""
        broker = self.broker
        leader = self.coordinator_id(group)
        if leader < 0 or (leader not in broker.leadership.live and leader != broker.broker_id):
            raise LeaderNotAvailable(f"group {group} has no live coordinator right now", retry_after=1)
        url = broker.topology.broker(leader).url
        headers = {"Authorization": authorization} if authorization else None
        try:
            async with broker._peers.request(method, f"{url}/v1/groups/{group}/offsets", json=body, headers=headers) as resp:
                answer = await resp.json(content_type=None)
                if resp.status == 200:
                    return answer
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            raise BrokerUnavailable(f"coordinator {leader} of group {group} did not answer: {exc}", broker_id=leader) from None
        err = ShoalError.from_problem(answer, status=resp.status)
        if isinstance(err, NotOwner):  # it moved between our look and its answer: the client retries
            raise LeaderNotAvailable(f"the coordinator of group {group} moved ({err})", retry_after=1)
        raise err

