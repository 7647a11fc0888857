"""Rendezvous owner hashing: pinned, deterministic, and minimal movement on membership change."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shoal.router.hashing import group_coordinator, owner, rank, weight

PARTITIONS = 120


def owners(topic: str, ids: list[int]) -> list[int]:
    return [owner(topic, p, ids) for p in range(PARTITIONS)]


def test_pinned_vectors():
    """These values are part of the cluster's on-disk contract: changing them moves data."""
    assert weight("orders\x000", 1) == 12572512044548695571
    assert rank("orders", 0, [1, 2, 3]) == [1, 3, 2]
    assert [owner("orders", p, [1, 2, 3]) for p in range(12)] == [1, 3, 1, 3, 3, 2, 1, 1, 1, 2, 1, 3]
    assert group_coordinator("billing", [1, 2, 3]) == 1
    assert group_coordinator("orders", [1, 2, 3, 4, 5]) == 4


def test_same_owners_in_a_fresh_interpreter():
    """No salted hash(): another process with another PYTHONHASHSEED agrees."""
    code = "from shoal.router.hashing import owner; print([owner('t', p, [1, 2, 3]) for p in range(120)])"
    out = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONHASHSEED": "12345"}, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == str(owners("t", [1, 2, 3]))


def test_order_of_broker_ids_does_not_matter():
    assert owners("t", [3, 1, 2]) == owners("t", [1, 2, 3])
    assert rank("t", 7, [3, 1, 2]) == rank("t", 7, [1, 2, 3])


def test_rank_is_a_permutation_headed_by_the_owner():
    for p in range(20):
        order = rank("t", p, [5, 6, 7, 8])
        assert sorted(order) == [5, 6, 7, 8]
        assert order[0] == owner("t", p, [5, 6, 7, 8])


def test_every_broker_gets_a_share():
    counts = {b: owners("t", [1, 2, 3]).count(b) for b in (1, 2, 3)}
    assert all(25 <= n <= 55 for n in counts.values()), counts


def test_adding_a_broker_moves_about_a_quarter_and_only_to_it():
    before = owners("t", [1, 2, 3])
    after = owners("t", [1, 2, 3, 4])
    moved = [p for p in range(PARTITIONS) if before[p] != after[p]]
    assert all(after[p] == 4 for p in moved), "a partition moved between the old brokers"
    assert 18 <= len(moved) <= 42, len(moved)  # 1/4 of 120 is 30


def test_removing_a_broker_moves_only_its_own():
    before = owners("t", [1, 2, 3, 4])
    after = owners("t", [1, 2, 4])
    for p in range(PARTITIONS):
        if before[p] != 3:
            assert after[p] == before[p]
        else:
            assert after[p] in (1, 2, 4)
            assert after[p] == rank("t", p, [1, 2, 3, 4])[1]  # the next in line takes over


def test_group_coordinator_moves_minimally_too():
    groups = [f"g{i}" for i in range(60)]
    before = {g: group_coordinator(g, [1, 2, 3]) for g in groups}
    after = {g: group_coordinator(g, [1, 2, 3, 4]) for g in groups}
    assert all(after[g] in (before[g], 4) for g in groups)


def test_no_brokers_is_an_error():
    with pytest.raises(ValueError):
        owner("t", 0, [])
