"""Consumer group coordination: membership, generations, assignment and fencing.

The coordinator of a group is the broker that wins the rendezvous hash of the group
name. It keeps the group in memory (a restarted coordinator makes members rejoin, as
their next heartbeat gets UNKNOWN_MEMBER_ID) and runs the assignor itself.

Membership changes (join, leave, a session that times out, a topic that grows) bump
the group's ``generation`` and recompute the *target* assignment. A member is handed
a partition of its target only once no other member still holds it: the previous
holder learns on its next heartbeat that the partition is revoked, commits, and stops
reporting it. So two members never hold one partition at once, and the old holder's
final commit is still accepted while a partition is in hand-off.

Fencing: a commit names ``member_id`` and ``generation``; it is accepted only from a
live member that holds the partition, at the generation its last heartbeat was given
(a member that has not heartbeated since the group moved on still commits what it
holds: holding is what makes a commit safe, and no two members hold a partition). A commit without a
member id is accepted only while the group has no live members (tools, manual
assignment). All methods run on the broker's event loop; no thread, one sweep task for
every group.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from shoal.broker.assignors import ASSIGNORS
from shoal.client.errors import IllegalGeneration, InvalidRequest, UnknownMemberId
from shoal.client.membership import partition_map
from shoal.client.structs import TopicPartition

log = logging.getLogger(__name__)

DEFAULT_SESSION_TIMEOUT_MS = 10_000
MIN_SESSION_TIMEOUT_MS = 500
MAX_SESSION_TIMEOUT_MS = 300_000
SOON_MS = 100  # heartbeat interval while a hand-off is pending for a member


@dataclass(eq=False)
class Member:
    member_id: str
    instance_id: str | None
    topics: frozenset[str]
    session_timeout_ms: int
    deadline: float
    held: set[TopicPartition] = field(default_factory=set)
    generation: int = 0
    last_seen: float = 0.0


@dataclass(eq=False)
class Group:
    name: str
    assignor: str
    generation: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    target: dict[str, set[TopicPartition]] = field(default_factory=dict)
    topic_sizes: dict[str, int] = field(default_factory=dict)

    def holder(self, tp: TopicPartition) -> Member | None:
        for member in self.members.values():
            if tp in member.held:
                return member
        return None

    @property
    def state(self) -> str:
        if not self.members:
            return "empty"
        settled = all(m.held == self.target.get(m.member_id, set()) for m in self.members.values())
        return "stable" if settled else "rebalancing"


class GroupCoordinator:
    """The groups this broker coordinates. ``partition_counts(topics)`` reads the topology."""

    def __init__(self, partition_counts: Callable[[Iterable[str]], Mapping[str, int]], *, clock=None):
        self._counts = partition_counts
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self.groups: dict[str, Group] = {}
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="group-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    # --- membership ---------------------------------------------------------------

    def join(
        self,
        group_name: str,
        topics: Iterable[str],
        *,
        member_id: str | None = None,
        instance_id: str | None = None,
        assignor: str = "sticky",
        session_timeout_ms: int = DEFAULT_SESSION_TIMEOUT_MS,
    ) -> dict:
        """Add a member (or re-admit a known one) and answer like a heartbeat."""
        if assignor not in ASSIGNORS:
            raise InvalidRequest(f"assignor must be one of {', '.join(sorted(ASSIGNORS))}", field="assignor")
        if not MIN_SESSION_TIMEOUT_MS <= session_timeout_ms <= MAX_SESSION_TIMEOUT_MS:
            raise InvalidRequest(
                f"session_timeout_ms must be {MIN_SESSION_TIMEOUT_MS}..{MAX_SESSION_TIMEOUT_MS}", field="session_timeout_ms"
            )
        topics = frozenset(topics)
        group = self.groups.get(group_name)
        if group is None or not group.members:
            group = self.groups.setdefault(group_name, Group(group_name, assignor))
            group.assignor = assignor
        elif group.assignor != assignor:
            raise InvalidRequest(
                f"group {group_name} uses assignor {group.assignor!r}; this member asked for {assignor!r}", field="assignor"
            )
        now = self._clock()
        member = group.members.get(member_id) if member_id else None
        if member is None and instance_id is not None:
            member = next((m for m in group.members.values() if m.instance_id == instance_id), None)
            if member is not None:  # a static member restarted: same share, new id fences the old process
                new_id = self._new_id(instance_id)
                del group.members[member.member_id]
                group.target[new_id] = group.target.pop(member.member_id, set())
                member.member_id = new_id
                group.members[new_id] = member
                log.info("group %s: static member %s rejoined as %s", group_name, instance_id, new_id)
        changed = False
        if member is None:
            member = Member(
                self._new_id(instance_id), instance_id, topics, session_timeout_ms, now + session_timeout_ms / 1000
            )
            group.members[member.member_id] = member
            changed = True
            log.info("group %s: member %s joined (topics %s)", group_name, member.member_id, sorted(topics))
        elif member.topics != topics:
            member.topics = topics
            changed = True
        member.session_timeout_ms = session_timeout_ms
        if changed:
            self._rebalance(group, "join")
        return self._heartbeat(group, member, member.held, now)

    def heartbeat(self, group_name: str, member_id: str, owned: Iterable[TopicPartition]) -> dict:
        """Keep a member alive, take back what it released, hand it what is free."""
        group, member = self._member(group_name, member_id)
        return self._heartbeat(group, member, set(owned), self._clock())

    def leave(self, group_name: str, member_id: str) -> None:
        group, member = self._member(group_name, member_id)
        del group.members[member_id]
        log.info("group %s: member %s left", group_name, member_id)
        self._rebalance(group, "leave")

    def fence(self, group_name: str, member_id: str | None, generation: int | None, tps: Iterable[TopicPartition]) -> None:
        """Raise unless a commit of ``tps`` by this member may be stored."""
        group = self.groups.get(group_name)
        live = group is not None and bool(group.members)
        if member_id is None:
            if live:
                raise IllegalGeneration(
                    f"group {group_name} has {len(group.members)} live member(s); only they may commit",
                    member_id=None, generation=group.generation,
                )
            return
        if not live or member_id not in group.members:
            raise UnknownMemberId(f"member {member_id} is not in group {group_name}", member_id=member_id)
        member = group.members[member_id]
        if generation != member.generation:
            raise IllegalGeneration(
                f"generation {generation} of member {member_id} is over; it was last given {member.generation}",
                member_id=member_id, generation=member.generation,
            )
        foreign = sorted(str(tp) for tp in tps if tp not in member.held)
        if foreign:
            raise IllegalGeneration(
                f"member {member_id} does not hold {', '.join(foreign)} in generation {generation}",
                member_id=member_id, generation=group.generation,
            )

    def describe(self, group_name: str) -> dict:
        group = self.groups.get(group_name)
        if group is None:
            return {"group": group_name, "state": "empty", "generation": 0, "assignor": None, "members": []}
        now = self._clock()
        return {
            "group": group_name,
            "state": group.state,
            "generation": group.generation,
            "assignor": group.assignor,
            "members": [
                {
                    "member_id": m.member_id,
                    "group_instance_id": m.instance_id,
                    "topics": sorted(m.topics),
                    "assignment": partition_map(m.held),
                    "target": partition_map(group.target.get(m.member_id, ())),
                    "generation": m.generation,
                    "last_heartbeat_ms_ago": round((now - m.last_seen) * 1000),
                    "session_timeout_ms": m.session_timeout_ms,
                }
                for m in sorted(group.members.values(), key=lambda m: m.member_id)
            ],
        }

    def live_groups(self) -> list[str]:
        return sorted(name for name, g in self.groups.items() if g.members)

    # --- internals ------------------------------------------------------------------

    @staticmethod
    def _new_id(instance_id: str | None) -> str:
        return f"{instance_id or 'member'}-{secrets.token_hex(6)}"

    def _member(self, group_name: str, member_id: str) -> tuple[Group, Member]:
        group = self.groups.get(group_name)
        if group is None or member_id not in group.members:
            raise UnknownMemberId(f"member {member_id} is not in group {group_name}; join again", member_id=member_id)
        return group, group.members[member_id]

    def _rebalance(self, group: Group, why: str) -> None:
        group.generation += 1
        subs = {m.member_id: m.topics for m in group.members.values()}
        wanted = {t for ts in subs.values() for t in ts}
        group.topic_sizes = dict(self._counts(wanted))
        current = {m.member_id: set(m.held) for m in group.members.values()}
        group.target = ASSIGNORS[group.assignor](subs, group.topic_sizes, current)
        log.info("group %s: generation %d after %s, %d member(s)", group.name, group.generation, why, len(subs))

    def _heartbeat(self, group: Group, member: Member, owned: set[TopicPartition], now: float) -> dict:
        wanted = {t for m in group.members.values() for t in m.topics}
        if dict(self._counts(wanted)) != group.topic_sizes:
            self._rebalance(group, "topology change")
        member.deadline = now + member.session_timeout_ms / 1000
        member.last_seen = now
        member.generation = group.generation
        member.held &= owned  # released partitions are free from now on
        target = group.target.get(member.member_id, set())
        for tp in target - member.held:
            if group.holder(tp) is None:
                member.held.add(tp)
        give = member.held & target  # what the member should hold; the rest it must revoke
        pending = len(target - member.held) or len(member.held - target)
        interval = member.session_timeout_ms // 3
        return {
            "group": group.name,
            "member_id": member.member_id,
            "generation": group.generation,
            "assignment": partition_map(give),
            "heartbeat_interval_ms": SOON_MS if pending else interval,
            "state": group.state,
        }

    def expire(self) -> None:
        """Drop members whose session ran out (their partitions go to the others)."""
        now = self._clock()
        for group in self.groups.values():
            dead = [m for m in group.members.values() if m.deadline < now]
            for member in dead:
                del group.members[member.member_id]
                log.warning(
                    "group %s: member %s missed its %d ms session; removing it",
                    group.name, member.member_id, member.session_timeout_ms,
                )
            if dead:
                self._rebalance(group, "session timeout")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            try:
                self.expire()
            except Exception:
                log.exception("group session sweep failed")
