"""What applying a new topology to a running cluster would change, and what it must refuse.

In a static cluster (no ``metadata:``) a partition's data stays on the broker that owns
it: there is no replication to move it. So a change may add topics, partitions, brokers
and config freely, but it must not give a partition that holds records (high watermark
> 0) to another broker, nor drop one by lowering a partition count; deleting a topic
with data needs consent. A replicated cluster moves partitions by replication
(``router.reassign``); the CLI then keeps only the dropped partitions in ``moves``. ``diff``
computes the plan (pure); the caller asks the current owners for the high watermarks
of ``plan.checks(...)`` and passes them to ``refusals``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shoal.client.structs import TopicPartition

from shoal.router.topology import Topology

__all__ = ["Change", "Move", "Plan", "diff"]


@dataclass(frozen=True)
class Change:
    """One line of a plan: ``op`` is ``+`` (added), ``-`` (removed) or ``~`` (changed)."""

    op: str
    kind: str
    name: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "kind": self.kind, "name": self.name, "detail": self.detail}


@dataclass(frozen=True)
class Move:
    """A partition that leaves its current owner: to ``target``, or gone when None."""

    topic: str
    partition: int
    source: int
    target: int | None

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True)
class Plan:
    """The difference between the running topology ``old`` and the candidate ``new``."""

    old: Topology
    new: Topology
    changes: list[Change] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)
    deleted_topics: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        """The candidate is what runs already (data dirs aside)."""
        return self.old.to_dict() == self.new.to_dict()

    @property
    def warnings(self) -> list[str]:
        """What the change does that producers should know: a topic with more
        partitions sends keyed records to other partitions than before (as in Kafka)."""
        out = []
        for name in sorted(self.old.topics.keys() & self.new.topics.keys()):
            before, after = self.old.topics[name].partitions, self.new.topics[name].partitions
            if after > before:
                out.append(
                    f"topic {name} grows from {before} to {after} partitions: records with a key now go to "
                    "other partitions than before, so per-key order holds only among records sent after the change"
                )
        return out

    def checks(self, *, delete_topics: bool) -> dict[TopicPartition, int]:
        """The partitions whose high watermark decides the plan, with their current
        owner's id. Deleted topics count only when deleting them needs consent."""
        out = {m.tp: m.source for m in self.moves}
        if not delete_topics:
            for name in self.deleted_topics:
                for p, owner_id in enumerate(self.old.owners(name)):
                    out[TopicPartition(name, p)] = owner_id
        return out

    def refusals(self, high_watermarks: dict[TopicPartition, int | str], *, delete_topics: bool) -> list[str]:
        """Why the plan cannot be applied; empty when it can.

        Args:
            high_watermarks: for each partition of ``checks()``, its high watermark on
                its current owner, or why it could not be read.
            delete_topics: deleting topics that hold data is allowed.
        """
        out = []
        old, new = self.old, self.new
        if new.cluster != old.cluster:
            out.append(f"the cluster is named {old.cluster!r}, not {new.cluster!r}")
        if new.epoch < old.epoch or (new.epoch == old.epoch and not self.same):
            out.append(
                f"epoch {new.epoch} is not newer than the running epoch {old.epoch}: "
                f"set epoch: {old.epoch + 1} in {new.source}"
            )
        for m in self.moves:
            hw = high_watermarks.get(m.tp, "not checked")
            where = f"move from broker {m.source} to broker {m.target}" if m.target is not None else "be removed"
            if isinstance(hw, str):
                out.append(f"{m.tp} would {where}, but broker {m.source} could not say if it is empty: {hw}")
            elif hw > 0:
                out.append(f"{m.tp} holds data (high watermark {hw}) and would {where}")
        if not delete_topics:
            for name in self.deleted_topics:
                parts = [TopicPartition(name, p) for p in range(old.topics[name].partitions)]
                unknown = [hw for tp in parts if isinstance(hw := high_watermarks.get(tp, "not checked"), str)]
                full = [tp.partition for tp in parts if isinstance(hw := high_watermarks.get(tp), int) and hw > 0]
                if full or unknown:
                    what = f"holds data (partitions {', '.join(map(str, full))})" if full else f"may hold data ({unknown[0]})"
                    out.append(f"topic {name} {what}: deleting it needs --delete-topics (or shoal topic delete)")
        return out

    def to_dict(self, high_watermarks: dict[TopicPartition, int | str], refusals: list[str]) -> dict[str, Any]:
        return {
            "cluster": self.new.cluster,
            "from_epoch": self.old.epoch,
            "to_epoch": self.new.epoch,
            "changes": [c.to_dict() for c in self.changes],
            "moves": [
                {
                    "topic": m.topic,
                    "partition": m.partition,
                    "from": m.source,
                    "to": m.target,
                    "high_watermark": hw if isinstance(hw := high_watermarks.get(m.tp), int) else None,
                }
                for m in self.moves
            ],
            "warnings": self.warnings,
            "refusals": refusals,
        }


def _config_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    return ", ".join(f"{key} {_show(old[key])} -> {_show(new[key])}" for key in old if old[key] != new[key])


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def diff(old: Topology, new: Topology) -> Plan:
    """The plan that turns running topology ``old`` into candidate ``new``. Pure."""
    changes: list[Change] = []
    old_brokers = {b.id: b for b in old.brokers}
    new_brokers = {b.id: b for b in new.brokers}
    for broker_id in sorted(old_brokers.keys() | new_brokers.keys()):
        before, after = old_brokers.get(broker_id), new_brokers.get(broker_id)
        if before is None:
            changes.append(Change("+", "broker", str(broker_id), after.url))
        elif after is None:
            changes.append(Change("-", "broker", str(broker_id), before.url))
        elif before.url != after.url:
            changes.append(Change("~", "broker", str(broker_id), f"url {before.url} -> {after.url}"))

    moves: list[Move] = []
    deleted = sorted(old.topics.keys() - new.topics.keys())
    for name in sorted(old.topics.keys() | new.topics.keys()):
        before, after = old.topics.get(name), new.topics.get(name)
        if before is None:
            changes.append(Change("+", "topic", name, f"{after.partitions} partitions"))
            continue
        if after is None:
            changes.append(Change("-", "topic", name, f"{before.partitions} partitions"))
            continue
        if detail := _config_changes(before.to_dict(), after.to_dict()):
            changes.append(Change("~", "topic", name, detail))
        old_owners, new_owners = old.owners(name), new.owners(name)
        for p, source in enumerate(old_owners):
            target = new_owners[p] if p < len(new_owners) else None
            if target != source:
                moves.append(Move(name, p, source, target))

    for kind in ("defaults", "settings"):
        if detail := _config_changes(getattr(old, kind).to_dict(), getattr(new, kind).to_dict()):
            changes.append(Change("~", kind, kind, detail))
    return Plan(old, new, changes, moves, deleted)
