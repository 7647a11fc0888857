"""Group membership, hand-off and fencing in the coordinator (no HTTP)."""

from __future__ import annotations

import pytest

from shoal.broker.coordinator import TAKEOVER_GRACE_MS, GroupCoordinator
from shoal.broker.storage.durable import write_record
from shoal.client.errors import GroupMaxSizeReached, IllegalGeneration, InvalidRequest, UnknownMemberId
from shoal.router.topology import Settings
from shoal.client.structs import TopicPartition as TP


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def coord(clock):
    return GroupCoordinator(lambda topics: {t: 12 for t in topics if t != "missing"}, clock=clock)


def tps(answer):
    return {TP(t, p) for t, ps in answer["assignment"].items() for p in ps}


def test_one_member_gets_every_partition(coord):
    a = coord.join("g", ["t"])
    assert tps(a) == {TP("t", p) for p in range(12)} and a["generation"] == 1


def test_partition_moves_only_after_its_holder_releases_it(coord):
    a = coord.join("g", ["t"])
    a_held = tps(a)
    b = coord.join("g", ["t"])
    assert tps(b) == set()  # everything is still held by a
    a2 = coord.heartbeat("g", a["member_id"], a_held)
    keep = tps(a2)
    assert len(keep) == 6 and keep < a_held
    # a still holds the revoked six until it reports them released: its commit of them is accepted
    revoked = a_held - keep
    coord.fence("g", a["member_id"], a2["generation"], revoked)
    coord.heartbeat("g", a["member_id"], keep)
    b2 = coord.heartbeat("g", b["member_id"], set())
    assert tps(b2) == revoked
    with pytest.raises(IllegalGeneration):
        coord.fence("g", a["member_id"], a2["generation"], revoked)


def test_silent_member_is_removed_after_its_session(coord, clock):
    a = coord.join("g", ["t"], session_timeout_ms=1000)
    b = coord.join("g", ["t"], session_timeout_ms=1000)
    coord.heartbeat("g", a["member_id"], tps(a))
    clock.now += 0.8
    coord.heartbeat("g", a["member_id"], tps(coord.heartbeat("g", a["member_id"], tps(a))))
    clock.now += 0.5  # b silent for 1.3 s
    coord.expire()
    assert [m["member_id"] for m in coord.describe("g")["members"]] == [a["member_id"]]
    with pytest.raises(UnknownMemberId):
        coord.fence("g", b["member_id"], b["generation"], [TP("t", 0)])
    with pytest.raises(UnknownMemberId):
        coord.heartbeat("g", b["member_id"], [])


def test_commit_fencing(coord):
    a = coord.join("g", ["t"])
    coord.fence("g", a["member_id"], a["generation"], [TP("t", 0)])
    with pytest.raises(IllegalGeneration):
        coord.fence("g", a["member_id"], a["generation"] - 1, [TP("t", 0)])
    with pytest.raises(IllegalGeneration):
        coord.fence("g", None, None, [TP("t", 0)])  # tools may not commit while members live
    coord.fence("other", None, None, [TP("t", 0)])  # an empty group takes member-less commits
    coord.leave("g", a["member_id"])
    coord.fence("g", None, None, [TP("t", 0)])


def test_static_member_restart_keeps_its_partitions_without_rebalance(coord):
    a = coord.join("g", ["t"], instance_id="worker-1")
    b = coord.join("g", ["t"], instance_id="worker-2")
    a = coord.heartbeat("g", a["member_id"], tps(a))
    coord.heartbeat("g", a["member_id"], tps(a))
    b = coord.heartbeat("g", b["member_id"], [])
    generation = b["generation"]
    again = coord.join("g", ["t"], instance_id="worker-1")  # the restarted process
    assert again["member_id"] != a["member_id"] and tps(again) == tps(a)
    assert again["generation"] == generation
    with pytest.raises(UnknownMemberId):
        coord.fence("g", a["member_id"], generation, tps(a))  # the old process is fenced


def test_assignor_must_match_the_group(coord):
    coord.join("g", ["t"], assignor="range")
    with pytest.raises(InvalidRequest):
        coord.join("g", ["t"], assignor="roundrobin")


def test_no_partition_is_handed_out_for_a_session_after_taking_over(coord, clock):
    """A fresh coordinator does not know who still holds what: the first member to rejoin
    waits one session (plus the grace) before it gets anything."""
    coord.took_over()
    a = coord.join("g", ["t"], session_timeout_ms=3000)
    assert tps(a) == set() and a["heartbeat_interval_ms"] == 1000
    assert coord.describe("g")["takeover_wait_ms"] == 3000 + TAKEOVER_GRACE_MS
    clock.now += 1
    b = coord.join("g", ["t"], session_timeout_ms=3000)
    assert tps(coord.heartbeat("g", a["member_id"], [])) == set() and tps(b) == set()
    clock.now += 2 + TAKEOVER_GRACE_MS / 1000  # members of before have let go by now
    share_a = tps(coord.heartbeat("g", a["member_id"], []))
    share_b = tps(coord.heartbeat("g", b["member_id"], []))
    assert len(share_a) == len(share_b) == 6 and share_a.isdisjoint(share_b)
    assert coord.describe("g")["takeover_wait_ms"] == 0


def test_a_longer_session_joining_during_the_hold_extends_it(coord, clock):
    coord.took_over()
    a = coord.join("g", ["t"], session_timeout_ms=1000)
    coord.join("g", ["t"], session_timeout_ms=5000)
    clock.now += 1 + TAKEOVER_GRACE_MS / 1000
    assert tps(coord.heartbeat("g", a["member_id"], [])) == set()
    clock.now += 4
    assert len(tps(coord.heartbeat("g", a["member_id"], []))) == 6


def test_a_group_first_joined_after_the_window_is_not_held(coord, clock):
    coord.took_over()
    clock.now += 10 + TAKEOVER_GRACE_MS / 1000
    assert len(tps(coord.join("g", ["t"], session_timeout_ms=10_000))) == 12


def test_group_max_size_refuses_one_more_member(clock):
    coord = GroupCoordinator(lambda topics: {t: 12 for t in topics}, settings=lambda: Settings(group_max_size=2), clock=clock)
    a = coord.join("g", ["t"], instance_id="w1")
    coord.join("g", ["t"])
    with pytest.raises(GroupMaxSizeReached) as err:
        coord.join("g", ["t"])
    assert err.value.max_size == 2 and err.value.http_status == 409
    assert len(coord.describe("g")["members"]) == 2
    coord.join("g", ["t"], member_id=a["member_id"])  # known members and static rejoins still come in
    coord.join("g", ["t"], instance_id="w1")
    coord.join("other", ["t"])


def test_an_empty_group_is_forgotten_after_the_retention(clock):
    coord = GroupCoordinator(
        lambda topics: {t: 12 for t in topics}, settings=lambda: Settings(group_empty_retention_ms=60_000), clock=clock
    )
    a = coord.join("g", ["t"])
    coord.leave("g", a["member_id"])
    clock.now += 59
    coord.expire()
    assert "g" in coord.groups
    b = coord.join("g", ["t"])  # back before the retention: the clock restarts when it empties again
    clock.now += 2
    coord.expire()
    assert "g" in coord.groups
    coord.leave("g", b["member_id"])
    clock.now += 59
    coord.expire()
    assert "g" in coord.groups
    clock.now += 1
    coord.expire()
    assert "g" not in coord.groups and coord.describe("g")["state"] == "empty"


def test_a_group_emptied_by_session_timeouts_is_forgotten(clock):
    coord = GroupCoordinator(
        lambda topics: {t: 12 for t in topics}, settings=lambda: Settings(group_empty_retention_ms=1000), clock=clock
    )
    coord.join("g", ["t"], session_timeout_ms=1000)
    clock.now += 1.1
    coord.expire()
    assert coord.groups["g"].members == {}
    clock.now += 1
    coord.expire()
    assert "g" not in coord.groups


def test_the_sweep_looks_only_at_what_is_due(coord, clock):
    """With 1000 groups heartbeating, a sweep touches no group until a deadline comes."""
    members = [coord.join(f"g{i}", ["t"], session_timeout_ms=10_000) for i in range(1000)]
    looked = []
    coord.groups = LoggingDict(coord.groups, looked)
    clock.now += 5
    coord.expire()
    assert looked == []
    for i, m in enumerate(members[:-1]):
        coord.heartbeat(f"g{i}", m["member_id"], tps(m))
    looked.clear()
    clock.now += 5.5  # every first deadline is due; all but one member heartbeated since
    coord.expire()
    assert len(set(looked)) == 1000 and dict.__getitem__(coord.groups, "g999").members == {}
    looked.clear()
    clock.now += 1
    coord.expire()
    assert looked == []


class LoggingDict(dict):
    """Groups by name, noting every group a caller looks at."""

    def __init__(self, data, looked):
        super().__init__(data)
        self.looked = looked

    def get(self, key, default=None):
        self.looked.append(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.looked.append(key)
        return super().__getitem__(key)

    def values(self):
        self.looked.extend(self)
        return super().values()

    def items(self):
        self.looked.extend(self)
        return super().items()


def twelve(topics):
    return {t: 12 for t in topics}


async def test_a_clean_stop_keeps_members_and_their_partitions(tmp_path, clock):
    """Stored at stop and loaded at start: members heartbeat on with their partitions, no
    rebalance, and a group that had no members then is not held back."""
    first = GroupCoordinator(twelve, state_dir=tmp_path, clock=clock)
    await first.start()  # a first start: it holds back for a session
    clock.now += 20
    a = first.join("g", ["t"])
    b = first.join("g", ["t"])
    keep = tps(first.heartbeat("g", a["member_id"], tps(a)))
    first.heartbeat("g", a["member_id"], keep)
    theirs = tps(first.heartbeat("g", b["member_id"], set()))
    generation = first.describe("g")["generation"]
    await first.stop()

    second = GroupCoordinator(twelve, state_dir=tmp_path, clock=clock)
    await second.start()
    assert not (tmp_path / "groups.snapshot").exists()  # a crash from now on finds nothing stale
    again = second.heartbeat("g", a["member_id"], keep)
    assert tps(again) == keep and again["generation"] == generation and again["state"] == "stable"
    assert tps(second.heartbeat("g", b["member_id"], theirs)) == theirs
    second.fence("g", a["member_id"], generation, keep)
    assert len(tps(second.join("h", ["t"]))) == 12
    await second.stop()


async def test_a_member_gone_during_a_clean_restart_expires_and_its_share_moves(tmp_path, clock):
    first = GroupCoordinator(twelve, state_dir=tmp_path, clock=clock)
    await first.start()  # a first start: it holds back for a session
    clock.now += 20
    a = first.join("g", ["t"], session_timeout_ms=1000)
    await first.stop()
    second = GroupCoordinator(twelve, state_dir=tmp_path, clock=clock)
    await second.start()
    b = second.join("g", ["t"], session_timeout_ms=5000)
    assert tps(b) == set()  # a still holds everything until its fresh session runs out
    clock.now += 1.1
    second.expire()
    assert a["member_id"] not in second.groups["g"].members
    assert len(tps(second.heartbeat("g", b["member_id"], []))) == 12
    await second.stop()


@pytest.mark.parametrize("write", [
    None,  # a crash, or a first start
    lambda path: path.write_bytes(b"torn"),
    lambda path: write_record(path, {"version": 1, "groups": [{"name": "g"}]}),
])
async def test_without_a_readable_snapshot_a_start_holds_back(tmp_path, clock, write):
    if write is not None:
        write(tmp_path / "groups.snapshot")
    coord = GroupCoordinator(twelve, state_dir=tmp_path, clock=clock)
    await coord.start()
    assert tps(coord.join("g", ["t"])) == set() and coord.groups.keys() == {"g"}
    await coord.stop()
