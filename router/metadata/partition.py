"""A partition's replication state and the only transitions it may take.

The state lives in etcd under ``partitions/<topic>/<partition>`` as JSON::

    {"replicas": [2, 3, 1], "leader": 2, "leader_epoch": 4, "isr": [2, 3]}

and, while the partition moves (Kafka's KIP-455 shape), ``"adding": [4]`` and
``"removing": [1]``: ``replicas`` is then the target set followed by the replicas
being removed, so the target is ``replicas`` without ``removing``.

- ``replicas``: the brokers holding the partition, preferred leader first (the head of
  the rendezvous ranking, ``Topology.replicas``).
- ``leader``: the broker that takes appends, or ``NO_LEADER`` (-1) when there is none.
- ``leader_epoch``: bumped by every change of leader; every replica fetch and produce
  carries it, and a stale one is refused (Kafka's KIP-101/KIP-320).
- ``isr``: the in-sync replicas, the leader always among them. An acknowledged
  (``acks=all``) record is on every one of them.
- ``adding`` / ``removing``: a reassignment under way. The added replicas copy the log
  as followers and join the ISR when caught up (``expand_isr``); then the leader hands
  leadership over if it is being removed or the target's preferred leader is in sync
  (``hand_off``), and ``finish_reassignment`` drops the removed replicas.

The functions below compute the next state or refuse with ``TransitionError``; they
never write. ``router.metadata.store`` applies a result only by compare-and-swap on the
etcd ``mod_revision`` it was computed from, so two brokers deciding at once cannot
both win. Pure, no IO.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace

__all__ = [
    "NO_LEADER", "PartitionState", "TransitionError", "initial_state", "elect", "shrink_isr", "expand_isr",
    "reassign", "hand_off", "finish_reassignment",
]

NO_LEADER = -1


class TransitionError(ValueError):
    """A change the replication rules forbid (the message says which rule)."""


@dataclass(frozen=True)
class PartitionState:
    """One partition's replicas, leader, leader epoch and ISR.

    ``mod_revision`` is the etcd revision the state was read at (0: not stored); it is
    what a compare-and-swap compares, and is not part of the stored value.
    """

    replicas: tuple[int, ...]
    leader: int
    leader_epoch: int
    isr: tuple[int, ...]
    mod_revision: int = field(default=0, compare=False)
    adding: tuple[int, ...] = ()
    removing: tuple[int, ...] = ()

    @property
    def target(self) -> tuple[int, ...]:
        """The replica set once the reassignment under way (if any) is done."""
        return tuple(r for r in self.replicas if r not in self.removing)

    @property
    def moving(self) -> bool:
        return bool(self.adding or self.removing)

    def to_json(self) -> bytes:
        body = {"replicas": list(self.replicas), "leader": self.leader, "leader_epoch": self.leader_epoch, "isr": list(self.isr)}
        if self.moving:
            body |= {"adding": list(self.adding), "removing": list(self.removing)}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes, mod_revision: int = 0) -> PartitionState:
        data = json.loads(raw)
        return cls(
            tuple(data["replicas"]), int(data["leader"]), int(data["leader_epoch"]), tuple(data["isr"]), mod_revision,
            tuple(data.get("adding", ())), tuple(data.get("removing", ())),
        )

    def to_dict(self) -> dict[str, object]:
        """The ``GET /v1/cluster`` view of this partition."""
        return {
            "leader": self.leader, "leader_epoch": self.leader_epoch, "replicas": list(self.replicas), "isr": list(self.isr),
            "adding": list(self.adding), "removing": list(self.removing),
        }


def initial_state(replicas: Iterable[int]) -> PartitionState:
    """A new partition: the preferred leader leads at epoch 0 and every replica is in
    sync (all logs are empty)."""
    ids = tuple(replicas)
    if not ids or len(set(ids)) != len(ids):
        raise TransitionError(f"replicas must be distinct broker ids, got {list(ids)}")
    return PartitionState(ids, ids[0], 0, ids)


def elect(state: PartitionState, candidate: int, live: Collection[int], *, unclean: bool = False) -> PartitionState:
    """``candidate`` takes over from a leader that is not live (one transaction's worth).

    The new state has ``leader = candidate``, ``leader_epoch + 1`` and the ISR without
    the old leader (and without any other replica that is not live: it cannot be in
    sync with a leader it cannot fetch from). Only a live ISR member may take over;
    with ``unclean`` a live out-of-sync replica may too, when no ISR member is live,
    and the ISR becomes just itself (records only the old ISR had are lost).

    Raises:
        TransitionError: the leader is live, or ``candidate`` may not lead.
    """
    if state.leader != NO_LEADER and state.leader in live:
        raise TransitionError(f"leader {state.leader} is live")
    if candidate not in live:
        raise TransitionError(f"broker {candidate} is not live")
    if candidate not in state.replicas:
        raise TransitionError(f"broker {candidate} is not a replica ({list(state.replicas)})")
    if candidate in state.isr:
        isr = tuple(b for b in state.isr if b == candidate or (b != state.leader and b in live))
    elif unclean and not any(b in live for b in state.isr):
        isr = (candidate,)
    else:
        raise TransitionError(f"broker {candidate} is not in sync (ISR {list(state.isr)}) and unclean election is off")
    return replace(state, leader=candidate, leader_epoch=state.leader_epoch + 1, isr=isr)


def _check_leader(state: PartitionState, leader: int, leader_epoch: int) -> None:
    if state.leader != leader or state.leader_epoch != leader_epoch:
        raise TransitionError(
            f"broker {leader} at epoch {leader_epoch} is not the leader (leader {state.leader} at epoch {state.leader_epoch})"
        )


def shrink_isr(state: PartitionState, leader: int, leader_epoch: int, follower: int) -> PartitionState:
    """The leader drops a lagging ``follower`` from the ISR (the leader stays in it).

    Raises:
        TransitionError: ``leader``/``leader_epoch`` is not the current leadership, the
            follower is the leader itself or not in the ISR.
    """
    _check_leader(state, leader, leader_epoch)
    if follower == leader:
        raise TransitionError("the leader cannot leave its own ISR")
    if follower not in state.isr:
        raise TransitionError(f"broker {follower} is not in the ISR ({list(state.isr)})")
    return replace(state, isr=tuple(b for b in state.isr if b != follower))


def expand_isr(state: PartitionState, leader: int, leader_epoch: int, follower: int) -> PartitionState:
    """The leader adds a caught-up ``follower`` replica back to the ISR.

    Raises:
        TransitionError: not the current leadership, not a replica, or already in the ISR.
    """
    _check_leader(state, leader, leader_epoch)
    if follower not in state.replicas:
        raise TransitionError(f"broker {follower} is not a replica ({list(state.replicas)})")
    if follower in state.isr:
        raise TransitionError(f"broker {follower} is already in the ISR")
    return replace(state, isr=(*state.isr, follower))


def reassign(state: PartitionState, target: Iterable[int]) -> PartitionState:
    """Start moving to replica set ``target`` (preferred leader first), or change the
    target of a move under way (moving back to the original set cancels it).

    Replicas that ``target`` adds are ``adding``: they follow the leader from now on.
    Replicas it drops are ``removing``: they stay replicas (and in the ISR) until
    ``finish_reassignment``. A replica being added by an earlier, unfinished move that
    ``target`` no longer wants is removed like any other.

    Raises:
        TransitionError: ``target`` is empty or names a broker twice.
    """
    target = tuple(target)
    if not target or len(set(target)) != len(target):
        raise TransitionError(f"target replicas must be distinct broker ids, got {list(target)}")
    original = [r for r in state.replicas if r not in state.adding]
    adding = tuple(r for r in target if r not in original)
    removing = tuple(r for r in state.replicas if r not in target)
    if not adding and not removing:  # back to (or already at) the original set, maybe reordered
        return replace(state, replicas=target, adding=(), removing=())
    return replace(state, replicas=target + removing, adding=adding, removing=removing)


def hand_off(state: PartitionState, leader: int, leader_epoch: int, successor: int) -> PartitionState:
    """The leader gives leadership to ``successor``, an in-sync replica that stays: a
    controlled hand-off (leader epoch + 1, the ISR unchanged). The caller has stopped
    taking appends and seen ``successor`` reach its log end before.

    Raises:
        TransitionError: not the current leadership, or ``successor`` is not an in-sync
            replica of the target set.
    """
    _check_leader(state, leader, leader_epoch)
    if successor == leader:
        raise TransitionError(f"broker {leader} leads already")
    if successor not in state.target or successor not in state.isr:
        raise TransitionError(f"broker {successor} is not an in-sync replica of {list(state.target)} (ISR {list(state.isr)})")
    return replace(state, leader=successor, leader_epoch=leader_epoch + 1)


def finish_reassignment(state: PartitionState, leader: int, leader_epoch: int) -> PartitionState:
    """The leader completes a move: every added replica is in sync and the leader is
    not being removed, so the removed replicas leave ``replicas`` and the ISR (and then
    delete their copy).

    Raises:
        TransitionError: not the current leadership, no move under way, an added
            replica is not in sync yet, or the leader is being removed.
    """
    _check_leader(state, leader, leader_epoch)
    if not state.moving:
        raise TransitionError("no reassignment is under way")
    behind = [r for r in state.adding if r not in state.isr]
    if behind:
        raise TransitionError(f"added replicas {behind} are not in sync yet (ISR {list(state.isr)})")
    if leader in state.removing:
        raise TransitionError(f"the leader {leader} is being removed: hand leadership off first")
    target = state.target
    return replace(state, replicas=target, isr=tuple(r for r in state.isr if r in target), adding=(), removing=())
