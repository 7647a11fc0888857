"""Consumer group coordination: membership, generations, assignment and fencing.

The coordinator of a group is the broker that wins the rendezvous hash of the group
name; in a replicated cluster, the leader of the group's ``__consumer_offsets``
partition, with one ``GroupCoordinator`` per partition it leads
(``broker/replication/group_offsets.py``). It keeps the group in memory (a restarted coordinator makes members rejoin, as
their next heartbeat gets UNKNOWN_MEMBER_ID) and runs the assignor itself.

Take-over: a coordinator that has just started after a crash (or has just become
coordinator through a topology change) does not know who held what before. Members of
the previous coordinator drop their partitions when their next heartbeat gets
UNKNOWN_MEMBER_ID, or when no heartbeat has been answered for a whole session. So a
group joined during the first session timeout (plus ``TAKEOVER_GRACE_MS``) after the
take-over accepts members at once but hands out no partition until that time has
passed: by then every member of before has let go. This is Kafka's "loading" state,
timed instead of read back, because membership is not stored while running.

A clean stop does store it: ``<data_dir>/groups.snapshot`` (written at stop, read and
removed at start, so a crash later never finds a stale one) is one framed record
(``storage/durable.py``) of every group with members, a msgpack map::

    {"version": 1, "groups": [{"name", "assignor", "generation", "topic_sizes": {topic: n},
      "members": [{"member_id", "instance_id", "topics": [...], "session_timeout_ms",
                   "generation", "held": {topic: [p, ...]}, "target": {topic: [p, ...]}}]}]}

The restarted coordinator loads it, gives each member a fresh session, and holds
nothing back: members that heartbeat again keep their partitions without a rebalance,
the others expire. A missing, torn or unreadable file counts as a crash.

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
every group, which looks only at what is due: a heap of session deadlines and of
empty groups to forget (after ``settings.group_empty_retention_ms``; committed offsets
live with the partition owners and are not touched).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shoal.broker.assignors import ASSIGNORS
from shoal.broker.storage.durable import read_record, write_record
from shoal.client.errors import GroupMaxSizeReached, IllegalGeneration, InvalidRequest, UnknownMemberId
from shoal.client.membership import from_partition_map, partition_map
from shoal.client.structs import TopicPartition
from shoal.router.topology import Settings

log = logging.getLogger(__name__)

DEFAULT_SESSION_TIMEOUT_MS = 10_000
MIN_SESSION_TIMEOUT_MS = 500
MAX_SESSION_TIMEOUT_MS = 300_000
SOON_MS = 100  # heartbeat interval while a hand-off is pending for a member
SNAPSHOT = "groups.snapshot"
# A member that lost its coordinator notices a whole session without an answer at most
# this much late: the client library's longest retry backoff between heartbeats.
TAKEOVER_GRACE_MS = 2_000


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
    hold_until: float = 0.0  # no partition is handed out before (take-over)
    empty_since: float | None = None

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

    def __init__(
        self,
        partition_counts: Callable[[Iterable[str]], Mapping[str, int]],
        *,
        settings: Callable[[], Settings] = Settings,
        state_dir: Path | None = None,
        clock=None,
        generation_floor: Callable[[str], int] = lambda group: 0,
    ):
        self._counts = partition_counts
        self._floor = generation_floor  # a new group's generations continue from here
        self._snapshot = state_dir / SNAPSHOT if state_dir is not None else None
        self._settings = settings
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self.groups: dict[str, Group] = {}
        self._sweeper: asyncio.Task | None = None
        self._took_over: float | None = None
        # (deadline, tie-breaker, group, member id or None for "forget if still empty")
        self._due: list[tuple[float, int, str, str | None]] = []
        self._seq = itertools.count()

    async def start(self, *, took_over: bool = True) -> None:
        """Start the sweep. Unless a clean stop's snapshot is loaded, the groups are taken
        over (held back) when ``took_over``: False for a first coordinator, which nobody preceded."""
        if self._sweeper is None:
            if not self._load_snapshot() and took_over:
                self.took_over()
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="group-sweeper")

    def took_over(self) -> None:
        """This broker has just become coordinator of groups it did not know: hold back
        the assignments of groups joined from now on for a session (see the module doc)."""
        self._took_over = self._clock()

    async def stop(self) -> None:
        """Stop the sweep and, once requests are no longer served, store the groups."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
            if self._snapshot is not None:
                try:
                    await asyncio.to_thread(write_record, self._snapshot, self._snapshot_body())
                except OSError as exc:
                    log.warning("could not store the groups in %s (%s); the next start holds them back", self._snapshot, exc)

    def _snapshot_body(self) -> dict:
        return {"version": 1, "groups": [
            {
                "name": g.name, "assignor": g.assignor, "generation": g.generation, "topic_sizes": g.topic_sizes,
                "members": [
                    {
                        "member_id": m.member_id, "instance_id": m.instance_id, "topics": sorted(m.topics),
                        "session_timeout_ms": m.session_timeout_ms, "generation": m.generation,
                        "held": partition_map(m.held), "target": partition_map(g.target.get(m.member_id, ())),
                    }
                    for m in g.members.values()
                ],
            }
            for g in self.groups.values() if g.members
        ]}

    def _load_snapshot(self) -> bool:
        """Load the groups of a clean stop; False when there is none (a crash, a first start)."""
        if self._snapshot is None:
            return False
        try:
            body = read_record(self._snapshot)
            self._snapshot.unlink()
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s); treating the last stop as a crash", self._snapshot, exc)
            return False
        now = self._clock()
        try:
            for g in body["groups"]:
                group = Group(g["name"], g["assignor"], g["generation"], topic_sizes=g["topic_sizes"])
                for m in g["members"]:
                    member = Member(
                        m["member_id"], m["instance_id"], frozenset(m["topics"]), m["session_timeout_ms"],
                        now + m["session_timeout_ms"] / 1000, from_partition_map(m["held"]), m["generation"], now,
                    )
                    group.members[member.member_id] = member
                    group.target[member.member_id] = from_partition_map(m["target"])
                    self._due_at(member.deadline, group.name, member.member_id)
                self.groups[group.name] = group
        except (KeyError, TypeError, AttributeError) as exc:
            log.warning("%s is not a group snapshot (%r); treating the last stop as a crash", self._snapshot, exc)
            self.groups.clear()
            self._due.clear()
            return False
        log.info("loaded %d group(s) with members from the clean stop in %s", len(self.groups), self._snapshot)
        return True

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
        now = self._clock()
        group = self.groups.get(group_name)
        if group is None:
            group = self.groups[group_name] = Group(group_name, assignor, self._floor(group_name))
        if not group.members:
            group.assignor = assignor
        elif group.assignor != assignor:
            raise InvalidRequest(
                f"group {group_name} uses assignor {group.assignor!r}; this member asked for {assignor!r}", field="assignor"
            )
        self._hold_for(group, session_timeout_ms, now)
        member = group.members.get(member_id) if member_id else None
        if member is None and instance_id is not None:
            member = next((m for m in group.members.values() if m.instance_id == instance_id), None)
            if member is not None:  # a static member restarted: same share, new id fences the old process
                new_id = self._new_id(instance_id)
                del group.members[member.member_id]
                group.target[new_id] = group.target.pop(member.member_id, set())
                member.member_id = new_id
                group.members[new_id] = member
                self._due_at(member.deadline, group_name, new_id)
                log.info("group %s: static member %s rejoined as %s", group_name, instance_id, new_id)
        changed = False
        if member is None:
            max_size = self._settings().group_max_size
            if len(group.members) >= max_size:
                raise GroupMaxSizeReached(
                    f"group {group_name} already has {len(group.members)} members (settings.group_max_size)",
                    max_size=max_size,
                )
            member = Member(
                self._new_id(instance_id), instance_id, topics, session_timeout_ms, now + session_timeout_ms / 1000
            )
            group.members[member.member_id] = member
            group.empty_since = None
            self._due_at(member.deadline, group_name, member.member_id)
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
        self._maybe_empty(group, self._clock())

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
            return {"group": group_name, "state": "empty", "generation": 0, "assignor": None,
                    "takeover_wait_ms": 0, "members": []}
        now = self._clock()
        return {
            "group": group_name,
            "state": group.state,
            "generation": group.generation,
            "assignor": group.assignor,
            "takeover_wait_ms": max(0, round((group.hold_until - now) * 1000)),
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

    def _hold_for(self, group: Group, session_timeout_ms: int, now: float) -> None:
        """Hold back the group's assignments until members of before the take-over, whose
        session is assumed as long as this joiner's, have surely let go."""
        if self._took_over is None or (group.members and now >= group.hold_until):
            return
        until = self._took_over + (session_timeout_ms + TAKEOVER_GRACE_MS) / 1000
        if until > max(now, group.hold_until):
            if group.hold_until <= now:
                log.info(
                    "group %s: holding assignments back for %d ms after taking over the group",
                    group.name, round((until - now) * 1000),
                )
            group.hold_until = until

    def _due_at(self, deadline: float, group_name: str, member_id: str | None) -> None:
        heapq.heappush(self._due, (deadline, next(self._seq), group_name, member_id))

    def _maybe_empty(self, group: Group, now: float) -> None:
        if not group.members and group.empty_since is None:
            group.empty_since = now
            self._due_at(now + self._settings().group_empty_retention_ms / 1000, group.name, None)

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
        holding_back = now < group.hold_until
        if not holding_back:
            for tp in target - member.held:
                if group.holder(tp) is None:
                    member.held.add(tp)
        give = member.held & target  # what the member should hold; the rest it must revoke
        pending = len(target - member.held) or len(member.held - target)
        interval = member.session_timeout_ms // 3
        if holding_back:  # come back when the hold ends, not every SOON_MS until then
            interval = min(interval, max(SOON_MS, round((group.hold_until - now) * 1000)))
            pending = 0
        return {
            "group": group.name,
            "member_id": member.member_id,
            "generation": group.generation,
            "assignment": partition_map(give),
            "heartbeat_interval_ms": SOON_MS if pending else interval,
            "state": group.state,
        }

    def expire(self) -> None:
        """Drop members whose session ran out (their partitions go to the others) and
        forget groups empty for ``group_empty_retention_ms``. Looks only at what is due."""
        now = self._clock()
        dead: dict[str, list[Member]] = {}
        while self._due and self._due[0][0] <= now:
            _, _, name, member_id = heapq.heappop(self._due)
            group = self.groups.get(name)
            if group is None:
                continue
            if member_id is None:
                retention = self._settings().group_empty_retention_ms / 1000
                if not group.members and group.empty_since is not None and group.empty_since + retention <= now:
                    del self.groups[name]
                    log.info("group %s: forgotten after %d ms without members", name, round(retention * 1000))
                continue
            member = group.members.get(member_id)
            if member is None:
                continue  # left, expired or renamed (static rejoin) since
            if member.deadline > now:
                self._due_at(member.deadline, name, member_id)  # it heartbeated: look again then
            else:
                dead.setdefault(name, []).append(member)
        for name, members in dead.items():
            group = self.groups[name]
            for member in members:
                del group.members[member.member_id]
                log.warning(
                    "group %s: member %s missed its %d ms session; removing it",
                    name, member.member_id, member.session_timeout_ms,
                )
            self._rebalance(group, "session timeout")
            self._maybe_empty(group, now)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            try:
                self.expire()
            except Exception:
                log.exception("group session sweep failed")

