"""Kafka's classic consumer-group protocol: the coordinator's state machine for one broker.

Client-side assignment, as in Kafka's ``GroupCoordinator``: members JoinGroup with
the protocols they support; once every known member has (re)joined, or the rebalance
timeout passed, a new generation starts, the first member becomes leader and receives
every member's metadata; the leader's SyncGroup hands out assignments, which every
member's SyncGroup returns. Heartbeats keep members alive (a member silent for its
session timeout is removed) and tell them REBALANCE_IN_PROGRESS when they must rejoin.

States: Empty -> PreparingRebalance -> CompletingRebalance -> Stable (-> Preparing...),
and back to Empty when the last member leaves. Memberships live in memory only (a
restarted coordinator makes members rejoin, which they do on UNKNOWN_MEMBER_ID);
committed offsets are stored by the partitions' owners, shared with the HTTP API.
Static membership (group.instance.id) is accepted but treated as dynamic.

Everything runs on the broker's loop; not safe across threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode

from shoal.broker.kafka.errors import KafkaError

log = logging.getLogger(__name__)

EMPTY, PREPARING, COMPLETING, STABLE = "Empty", "PreparingRebalance", "CompletingRebalance", "Stable"
_SWEEP_S = 0.25


@dataclass(eq=False)
class Member:
    member_id: str
    client_id: str
    client_host: str
    session_timeout_s: float
    rebalance_timeout_s: float
    protocols: list[tuple[str, bytes]]
    instance_id: str | None = None
    assignment: bytes = b""
    last_seen: float = field(default_factory=time.monotonic)
    join: asyncio.Future | None = None
    sync: asyncio.Future | None = None

    def metadata(self, protocol: str) -> bytes:
        return next((m for name, m in self.protocols if name == protocol), b"")


@dataclass(eq=False)
class Group:
    group_id: str
    protocol_type: str = ""
    state: str = EMPTY
    generation: int = 0
    protocol: str | None = None
    leader: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    rebalance_deadline: float = 0.0


class ClassicGroups:
    """The classic groups this broker coordinates."""

    def __init__(self) -> None:
        self.groups: dict[str, Group] = {}
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        for group in self.groups.values():
            for m in group.members.values():
                for fut in (m.join, m.sync):
                    if fut is not None and not fut.done():
                        fut.set_exception(KafkaError(ErrorCode.coordinator_not_available))

    # -- requests -------------------------------------------------------------------

    async def join(
        self, group_id: str, member_id: str, *, protocol_type: str, protocols: list[tuple[str, bytes]],
        session_timeout_ms: int, rebalance_timeout_ms: int, client_id: str, client_host: str,
        instance_id: str | None = None,
    ) -> dict:
        group = self.groups.setdefault(group_id, Group(group_id))
        if not protocols:
            raise KafkaError(ErrorCode.inconsistent_group_protocol)
        if group.members and protocol_type != group.protocol_type:
            raise KafkaError(ErrorCode.inconsistent_group_protocol)
        names = {name for name, _ in protocols}
        if group.members and not any(names & {n for n, _ in m.protocols} for m in group.members.values()):
            raise KafkaError(ErrorCode.inconsistent_group_protocol)
        if member_id:
            member = group.members.get(member_id)
            if member is None:
                raise KafkaError(ErrorCode.unknown_member_id)
            member.protocols = protocols
            member.session_timeout_s = session_timeout_ms / 1000
            member.rebalance_timeout_s = rebalance_timeout_ms / 1000
        else:
            member = Member(
                f"{client_id or 'member'}-{uuid.uuid4()}", client_id, client_host,
                session_timeout_ms / 1000, rebalance_timeout_ms / 1000, protocols, instance_id,
            )
            group.members[member.member_id] = member
        group.protocol_type = protocol_type
        member.last_seen = time.monotonic()
        if member.join is not None and not member.join.done():
            member.join.cancel()
        member.join = asyncio.get_running_loop().create_future()
        if group.state != PREPARING:
            self._prepare(group, f"member {member.member_id} joined")
        self._maybe_complete_join(group)
        return await member.join

    async def sync(self, group_id: str, member_id: str, generation: int, assignments: dict[str, bytes]) -> bytes:
        group, member = self._member(group_id, member_id)
        if generation != group.generation:
            raise KafkaError(ErrorCode.illegal_generation)
        member.last_seen = time.monotonic()
        if group.state == PREPARING:
            raise KafkaError(ErrorCode.rebalance_in_progress)
        if group.state == STABLE:
            return member.assignment
        if member_id == group.leader:
            for m in group.members.values():
                m.assignment = assignments.get(m.member_id, b"")
            group.state = STABLE
            for m in group.members.values():
                if m.sync is not None and not m.sync.done():
                    m.sync.set_result(m.assignment)
            log.info("kafka group %s: generation %d stable with %d members", group_id, group.generation, len(group.members))
            return member.assignment
        member.sync = asyncio.get_running_loop().create_future()
        return await member.sync

    def heartbeat(self, group_id: str, member_id: str, generation: int) -> None:
        group, member = self._member(group_id, member_id)
        member.last_seen = time.monotonic()
        if generation != group.generation:
            raise KafkaError(ErrorCode.illegal_generation)
        if group.state == PREPARING:
            raise KafkaError(ErrorCode.rebalance_in_progress)

    def leave(self, group_id: str, member_id: str) -> None:
        group, member = self._member(group_id, member_id)
        self._remove(group, member, "left")

    def check_commit(self, group_id: str, member_id: str, generation: int) -> None:
        """Raise unless a commit of (member_id, generation) may be stored now.

        A commit with generation -1 and no member comes from a consumer outside any
        group (assign(), tools) and is accepted while the group has no members.
        """
        group = self.groups.get(group_id)
        if group is None or not group.members:
            if generation < 0 or not member_id:
                return
            raise KafkaError(ErrorCode.unknown_member_id if member_id else ErrorCode.illegal_generation)
        if generation < 0 and not member_id:
            raise KafkaError(ErrorCode.rebalance_in_progress if group.state == PREPARING else ErrorCode.illegal_generation)
        member = group.members.get(member_id)
        if member is None:
            raise KafkaError(ErrorCode.unknown_member_id)
        if generation != group.generation:
            raise KafkaError(ErrorCode.illegal_generation)
        if group.state == PREPARING:
            raise KafkaError(ErrorCode.rebalance_in_progress)
        member.last_seen = time.monotonic()

    def describe(self, group_id: str) -> dict:
        group = self.groups.get(group_id)
        if group is None:
            return {"error_code": 0, "group_id": group_id, "group_state": "Dead", "protocol_type": "", "protocol_data": "", "members": []}
        return {
            "error_code": 0,
            "group_id": group_id,
            "group_state": group.state,
            "protocol_type": group.protocol_type,
            "protocol_data": group.protocol or "",
            "members": [
                {
                    "member_id": m.member_id, "group_instance_id": m.instance_id, "client_id": m.client_id,
                    "client_host": m.client_host, "member_metadata": m.metadata(group.protocol or ""),
                    "member_assignment": m.assignment,
                }
                for m in group.members.values()
            ],
        }

    # -- transitions -------------------------------------------------------------------

    def _member(self, group_id: str, member_id: str) -> tuple[Group, Member]:
        group = self.groups.get(group_id)
        member = group.members.get(member_id) if group else None
        if member is None:
            raise KafkaError(ErrorCode.unknown_member_id)
        return group, member

    def _prepare(self, group: Group, why: str) -> None:
        group.state = PREPARING
        timeout = max((m.rebalance_timeout_s for m in group.members.values()), default=0.0)
        group.rebalance_deadline = time.monotonic() + timeout
        for m in group.members.values():
            if m.sync is not None and not m.sync.done():
                m.sync.set_exception(KafkaError(ErrorCode.rebalance_in_progress))
        log.info("kafka group %s: rebalancing (%s)", group.group_id, why)

    def _maybe_complete_join(self, group: Group, *, force: bool = False) -> None:
        if group.state != PREPARING:
            return
        pending = [m for m in group.members.values() if m.join is None or m.join.done()]
        if pending and not force:
            return
        for m in pending:  # did not rejoin within the rebalance timeout
            group.members.pop(m.member_id, None)
        if not group.members:
            group.state, group.protocol, group.leader = EMPTY, None, None
            group.generation += 1
            return
        group.generation += 1
        members = list(group.members.values())
        if group.leader not in group.members:
            group.leader = members[0].member_id
        leader = group.members[group.leader]
        common = set.intersection(*({n for n, _ in m.protocols} for m in members))
        group.protocol = next(n for n, _ in leader.protocols if n in common)
        group.state = COMPLETING
        for m in members:
            m.assignment = b""
            m.join.set_result(
                {
                    "generation_id": group.generation,
                    "protocol_type": group.protocol_type,
                    "protocol_name": group.protocol,
                    "leader": group.leader,
                    "member_id": m.member_id,
                    "members": [
                        {"member_id": o.member_id, "group_instance_id": o.instance_id, "metadata": o.metadata(group.protocol)}
                        for o in members
                    ] if m.member_id == group.leader else [],
                }
            )

    def _remove(self, group: Group, member: Member, why: str) -> None:
        group.members.pop(member.member_id, None)
        for fut in (member.join, member.sync):
            if fut is not None and not fut.done():
                fut.set_exception(KafkaError(ErrorCode.unknown_member_id))
        if group.state == PREPARING:
            self._maybe_complete_join(group)
        elif group.members:
            self._prepare(group, f"member {member.member_id} {why}")
        else:
            group.state, group.protocol, group.leader = EMPTY, None, None
            group.generation += 1

    def expire(self) -> None:
        now = time.monotonic()
        for group in list(self.groups.values()):
            for m in list(group.members.values()):
                waiting = m.join is not None and not m.join.done()
                if not waiting and now - m.last_seen > m.session_timeout_s:
                    log.info("kafka group %s: member %s timed out", group.group_id, m.member_id)
                    self._remove(group, m, "timed out")
            if group.state == PREPARING and now >= group.rebalance_deadline:
                self._maybe_complete_join(group, force=True)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(_SWEEP_S)
            try:
                self.expire()
            except Exception:
                log.exception("kafka groups: sweep failed")
