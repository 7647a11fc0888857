"""The console's views from hand-made snapshots: replicas, lag, metrics parsing and rates (no server)."""

from __future__ import annotations

import asyncio
import time

from shoal.router.console import views
from shoal.router.gateway.app import create_gateway_app
from shoal.router.topology import Topology
from shoal.router.console.collector import BrokerState, Collector, Snapshot, _Cache, parse_metrics
from shoal.router.console.replicas import partition_states

STATIC = {
    "cluster": "c", "epoch": 3,
    "topics": {"orders": {"partitions": 3}},
    "owners": {"orders": [1, 2, 1]},
}
REPLICATED = {
    **STATIC,
    "topics": {"orders": {"partitions": 3, "replication_factor": 3}},
    "partitions": {"orders": [
        {"leader": 1, "leader_epoch": 4, "replicas": [1, 2, 3], "isr": [1, 2, 3]},
        {"leader": 2, "leader_epoch": 1, "replicas": [2, 3, 1], "isr": [2]},
        {"leader": None, "leader_epoch": 7, "replicas": [3, 1, 2], "isr": [3]},
    ]},
}


def snapshot(cluster: dict, up=(1, 2, 3), stats=None, rates=None) -> Snapshot:
    brokers = {i: BrokerState(i, f"http://b{i}", up=i in up) for i in (1, 2, 3)}
    states = {t: partition_states(cluster, t) for t in cluster["topics"]}
    return Snapshot(1, cluster, states, brokers, stats or {}, rates or {}, [])


def test_static_clusters_show_the_owner_as_leader_and_only_replica():
    assert partition_states(STATIC, "orders") == [
        {"leader": 1, "leader_epoch": 0, "replicas": [1], "isr": [1]},
        {"leader": 2, "leader_epoch": 0, "replicas": [2], "isr": [2]},
        {"leader": 1, "leader_epoch": 0, "replicas": [1], "isr": [1]},
    ]


def test_replicated_clusters_show_leader_replicas_and_isr_as_given():
    states = partition_states(REPLICATED, "orders")
    assert states == REPLICATED["partitions"]["orders"]
    unknown = {**REPLICATED, "partitions": {"orders": [None, *REPLICATED["partitions"]["orders"][1:]]}}
    assert partition_states(unknown, "orders")[0] == {"leader": None, "leader_epoch": None, "replicas": [], "isr": []}


def test_overview_counts_under_replicated_and_offline_partitions():
    view = views.overview(snapshot(REPLICATED, up=(1, 3)), lambda t: True)
    # p1: ISR 1 of 3 and its leader (2) down; p2: no leader, ISR 1 of 3.
    assert (view["partitions"], view["under_replicated"], view["offline"]) == (3, 2, 2)
    assert {b["id"]: b["leader_of"] for b in view["brokers"]} == {1: 1, 2: 0, 3: 0}
    row = views.topic_row(snapshot(REPLICATED), "orders")
    assert (row["replication"], row["under_replicated"], row["offline"]) == (3, 2, 1)


def test_lag_is_clamped_at_the_log_start_offset():
    """Records deleted by retention before the group read them are not lag."""
    snap = snapshot(STATIC, stats={("orders", 0): [100, 40, 0], ("orders", 1): [100, 0, 0]})
    rows = [
        {"topic": "orders", "partition": 0, "offset": 10, "high_watermark": 100},
        {"topic": "orders", "partition": 1, "offset": 10, "high_watermark": 100},
        {"topic": "orders", "partition": 2, "offset": None, "high_watermark": 5},
    ]
    assert [r["lag"] for r in views.lag_rows(snap, rows)] == [60, 90, None]
    assert views.group_row(snap, "g", rows, {"state": "empty", "members": []})["lag"] == 150


def test_group_page_lists_held_partitions_that_were_never_committed():
    snap = snapshot(STATIC, stats={("orders", 2): [7, 0, 0]})
    members = {"state": "stable", "members": [{"member_id": "m1", "assignment": {"orders": [0, 2]}}]}
    rows = [{"topic": "orders", "partition": 0, "offset": 1, "high_watermark": 3}]
    lags = views.group(snap, "g", rows, members)["lag_rows"]
    assert [(r["partition"], r["offset"], r["lag"], r["member"]) for r in lags] == [(0, 1, 2, "m1"), (2, None, None, "m1")]


def test_lists_are_filtered_then_paged():
    cluster = {"cluster": "c", "epoch": 1, "topics": {f"t{i}": {"partitions": 1} for i in range(10)},
               "owners": {f"t{i}": [1] for i in range(10)}}
    found = views.topics(snapshot(cluster), lambda t: t != "t3", "T", 4, 3)
    assert (found["total"], [t["name"] for t in found["items"]]) == (9, ["t5", "t6", "t7"])


def test_metrics_are_read_whatever_the_label_order():
    state = BrokerState(1, "http://b1")
    parse_metrics(
        '# HELP shoal_partition_high_watermark x\n'
        'shoal_partition_high_watermark{partition="2",topic="orders"} 15.0\n'
        'shoal_partition_log_start_offset{topic="orders",partition="2"} 5.0\n'
        'shoal_partition_size_bytes{partition="2",topic="orders"} 1024.0\n'
        'shoal_partition_segments{partition="2",topic="orders"} 1.0\n'
        'shoal_records_appended_total{topic="orders"} 42.0\n'
        'shoal_records_appended_created{topic="orders"} 1.7e+09\n'
        'shoal_bytes_fetched_total{topic="orders"} 9.0\n',
        state,
    )
    assert state.partitions == {("orders", 2): [15, 5, 1024]}
    assert state.counters == {"orders": [42.0, 0.0, 9.0]}


def test_rates_count_a_restarted_broker_from_zero():
    collector = Collector(gateway=None)
    first = {1: BrokerState(1, "u", up=True, counters={"orders": [1000.0, 0.0, 0.0]})}
    assert collector._rates(10.0, first) is None  # one sample is no rate
    restarted = {1: BrokerState(1, "u", up=True, counters={"orders": [30.0, 0.0, 0.0]})}
    assert collector._rates(12.0, restarted) == {"orders": [15.0, 0.0, 0.0]}
    grown = {1: BrokerState(1, "u", up=True, counters={"orders": [50.0, 0.0, 0.0]})}
    assert collector._rates(14.0, grown) == {"orders": [10.0, 0.0, 0.0]}


def test_no_console_serves_no_console_routes():
    topology = Topology.from_dict(STATIC | {"brokers": [{"id": 1, "url": "http://127.0.0.1:1"}], "owners": {}})

    def paths(app) -> set[str]:
        return {r.canonical for r in app.router.resources()}

    assert "/console/api/overview" in paths(create_gateway_app(topology))
    assert not any(p.startswith("/console") for p in paths(create_gateway_app(topology, console=False)))


async def test_cache_shares_one_call_and_answers_a_stale_value_while_it_refreshes():
    cache = _Cache(ttl=0.05, stale=60)
    calls = 0
    release = asyncio.Event()

    async def make():
        nonlocal calls
        calls += 1
        if calls > 1:
            await release.wait()
        return calls

    assert await asyncio.gather(*(cache.get("k", make) for _ in range(3))) == [1, 1, 1]
    await asyncio.sleep(0.06)  # the value is now older than ttl
    assert [await cache.get("k", make), await cache.get("k", make)] == [1, 1]  # at once, not waiting
    await asyncio.sleep(0)  # let the refresh start
    assert calls == 2  # one refresh for both
    release.set()
    deadline = time.monotonic() + 5
    while await cache.get("k", make) != 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_cache_past_stale_waits_for_a_new_value():
    cache = _Cache(ttl=0, stale=0)
    calls = iter(range(10))

    async def make():
        return next(calls)

    assert [await cache.get("k", make) for _ in range(3)] == [0, 1, 2]
