"""Partition state transitions: who may lead, how the ISR changes, and what is refused."""

from __future__ import annotations

import pytest

from shoal.router.metadata.partition import (
    NO_LEADER,
    PartitionState,
    TransitionError,
    elect,
    expand_isr,
    finish_reassignment,
    hand_off,
    initial_state,
    reassign,
    shrink_isr,
)

S = PartitionState((1, 2, 3), 1, 4, (1, 2, 3), mod_revision=77)


def test_initial_state_and_json_round_trip():
    state = initial_state([2, 3, 1])
    assert state == PartitionState((2, 3, 1), 2, 0, (2, 3, 1))
    assert state.to_json() == b'{"replicas":[2,3,1],"leader":2,"leader_epoch":0,"isr":[2,3,1]}'
    again = PartitionState.from_json(state.to_json(), 9)
    assert again == state and again.mod_revision == 9
    assert state.to_dict() == {
        "leader": 2, "leader_epoch": 0, "replicas": [2, 3, 1], "isr": [2, 3, 1], "adding": [], "removing": [],
    }
    with pytest.raises(TransitionError):
        initial_state([1, 1])


def test_an_isr_member_takes_over_with_the_next_epoch():
    assert elect(S, 2, {2, 3}) == PartitionState((1, 2, 3), 2, 5, (2, 3))
    # A replica that is not live cannot be in sync with the new leader either.
    assert elect(S, 3, {3}) == PartitionState((1, 2, 3), 3, 5, (3,))


@pytest.mark.parametrize(
    ("state", "candidate", "live", "why"),
    [
        (S, 2, {1, 2}, "leader 1 is live"),
        (S, 2, {3}, "broker 2 is not live"),
        (PartitionState((1, 2), 1, 0, (1, 2)), 3, {3}, "broker 3 is not a replica"),
        (PartitionState((1, 2, 3), 1, 0, (1, 2)), 3, {3}, "broker 3 is not in sync"),
    ],
)
def test_election_refusals(state, candidate, live, why):
    with pytest.raises(TransitionError, match=why):
        elect(state, candidate, live)


def test_unclean_election_only_when_no_isr_member_is_live():
    state = PartitionState((1, 2, 3), 1, 0, (1, 2))
    with pytest.raises(TransitionError):
        elect(state, 3, {2, 3}, unclean=True)  # 2 is in sync and live: it must be the one
    assert elect(state, 3, {3}, unclean=True) == PartitionState((1, 2, 3), 3, 1, (3,))


def test_a_leaderless_partition_can_be_taken():
    state = PartitionState((1, 2), NO_LEADER, 3, (2,))
    assert elect(state, 2, {2}) == PartitionState((1, 2), 2, 4, (2,))


def test_isr_shrink_and_expand_by_the_leader_only():
    shrunk = shrink_isr(S, 1, 4, 3)
    assert shrunk.isr == (1, 2) and shrunk.leader_epoch == 4
    assert expand_isr(shrunk, 1, 4, 3).isr == (1, 2, 3)
    with pytest.raises(TransitionError, match="not the leader"):
        shrink_isr(S, 1, 3, 3)  # a stale epoch
    with pytest.raises(TransitionError, match="not the leader"):
        expand_isr(shrunk, 2, 4, 3)
    with pytest.raises(TransitionError, match="own ISR"):
        shrink_isr(S, 1, 4, 1)
    with pytest.raises(TransitionError, match="not in the ISR"):
        shrink_isr(shrunk, 1, 4, 3)
    with pytest.raises(TransitionError, match="already in the ISR"):
        expand_isr(S, 1, 4, 2)
    with pytest.raises(TransitionError, match="not a replica"):
        expand_isr(shrunk, 1, 4, 9)


def test_a_reassignment_adds_then_drops_replicas():
    moving = reassign(S, [4, 1, 2])
    assert (moving.replicas, moving.adding, moving.removing, moving.target) == ((4, 1, 2, 3), (4,), (3,), (4, 1, 2))
    assert PartitionState.from_json(moving.to_json()) == moving
    with pytest.raises(TransitionError, match="not in sync yet"):
        finish_reassignment(moving, 1, 4)
    synced = expand_isr(moving, 1, 4, 4)
    # the preferred leader of the target is 4: the leader hands off, epoch + 1, the ISR unchanged
    handed = hand_off(synced, 1, 4, 4)
    assert (handed.leader, handed.leader_epoch, handed.isr) == (4, 5, (1, 2, 3, 4))
    with pytest.raises(TransitionError, match="is not the leader"):
        finish_reassignment(handed, 1, 4)
    done = finish_reassignment(handed, 4, 5)
    assert done == PartitionState((4, 1, 2), 4, 5, (1, 2, 4))
    assert b"adding" not in done.to_json()


def test_a_leader_being_removed_must_hand_off_first():
    moving = expand_isr(reassign(S, [2, 3, 4]), 1, 4, 4)
    with pytest.raises(TransitionError, match="hand leadership off first"):
        finish_reassignment(moving, 1, 4)
    with pytest.raises(TransitionError, match="not an in-sync replica"):
        hand_off(reassign(S, [2, 3, 4]), 1, 4, 4)  # 4 has not caught up
    with pytest.raises(TransitionError, match="leads already"):
        hand_off(moving, 1, 4, 1)


def test_changing_or_cancelling_a_move():
    moving = reassign(S, [4, 1, 2])
    # a new target while 4 is still copying: 4 is removed again (and deletes its copy)
    changed = reassign(moving, [5, 1, 2])
    assert (changed.replicas, changed.adding, changed.removing) == ((5, 1, 2, 4, 3), (5,), (4, 3))
    back = reassign(moving, [1, 2, 3])
    assert (back.replicas, back.adding, back.removing) == ((1, 2, 3, 4), (), (4,))
    assert reassign(S, [1, 2, 3]) == S and not reassign(S, [1, 2, 3]).moving
    with pytest.raises(TransitionError):
        reassign(S, [1, 1])
