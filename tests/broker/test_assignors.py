"""Range, round-robin and sticky assignment."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shoal.broker.assignors import range_assign, roundrobin_assign, sticky_assign
from shoal.client.structs import TopicPartition as TP


def _flat(assignment):
    return sorted(tp for tps in assignment.values() for tp in tps)


def test_range_gives_contiguous_runs_first_members_one_more():
    out = range_assign({"a": frozenset({"t"}), "b": frozenset({"t"}), "c": frozenset({"t"})}, {"t": 7})
    assert out == {"a": {TP("t", 0), TP("t", 1), TP("t", 2)}, "b": {TP("t", 3), TP("t", 4)}, "c": {TP("t", 5), TP("t", 6)}}


def test_roundrobin_deals_in_turn_respecting_subscriptions():
    out = roundrobin_assign({"a": frozenset({"t", "u"}), "b": frozenset({"t"})}, {"t": 3, "u": 2})
    assert out["b"] == {TP("t", 1)}
    assert out["a"] == {TP("t", 0), TP("t", 2), TP("u", 0), TP("u", 1)}


def test_sticky_adding_a_member_moves_only_what_the_newcomer_takes():
    subs = {m: frozenset({"t"}) for m in "abc"}
    before = sticky_assign(subs, {"t": 12})
    after = sticky_assign({**subs, "d": frozenset({"t"})}, {"t": 12}, before)
    assert [len(after[m]) for m in "abcd"] == [3, 3, 3, 3]
    moved = {tp for m in "abc" for tp in before[m] - after[m]}
    assert moved == after["d"]


def test_sticky_removing_a_member_moves_only_its_partitions():
    subs = {m: frozenset({"t"}) for m in "abc"}
    before = sticky_assign(subs, {"t": 12})
    after = sticky_assign({m: subs[m] for m in "ab"}, {"t": 12}, before)
    for m in "ab":
        assert before[m] <= after[m]
    assert after["a"] | after["b"] == {TP("t", p) for p in range(12)}


@given(
    members=st.integers(1, 6),
    partitions=st.integers(0, 40),
    churn=st.lists(st.booleans(), max_size=6),
)
def test_every_assignor_covers_each_partition_exactly_once(members, partitions, churn):
    subs = {f"m{i}": frozenset({"t"}) for i in range(members)}
    universe = [TP("t", p) for p in range(partitions)]
    current = None
    for assign in (range_assign, roundrobin_assign, sticky_assign):
        out = assign(subs, {"t": partitions}, current)
        assert _flat(out) == universe
        sizes = [len(v) for v in out.values()]
        assert max(sizes) - min(sizes) <= 1
    for drop in churn:  # sticky stays complete and balanced through membership churn
        if drop and len(subs) > 1:
            subs.pop(sorted(subs)[0])
        else:
            subs[f"n{len(subs)}{drop}"] = frozenset({"t"})
        current = sticky_assign(subs, {"t": partitions}, current)
        assert _flat(current) == universe
        sizes = [len(v) for v in current.values()]
        assert max(sizes) - min(sizes) <= 1
