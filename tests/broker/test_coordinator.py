"""Group membership, hand-off and fencing in the coordinator (no HTTP)."""

from __future__ import annotations

import pytest

from shoal.broker.coordinator import GroupCoordinator
from shoal.client.errors import IllegalGeneration, InvalidRequest, UnknownMemberId
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
