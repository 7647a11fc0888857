"""CLI rendering: build the view, render it, compare text and JSON with golden strings."""

from __future__ import annotations

import json

from shoal.client.structs import Record
from shoal.client.structs import TopicPartition as TP
from shoal.router.cli.cluster import info_view, render_info, render_up
from shoal.router.cli.group import describe_view, list_view, new_offset, render_describe, render_list, render_seek
from shoal.router.cli.output import key_values, sections, table, to_json
from shoal.router.cli.session import BrokerState
from shoal.router.cli.topic import record_view, render_describe as render_topic, render_list as render_topics
from shoal.router.cli.topic import render_topic_rows
from shoal.router.cli.topology import render_apply, render_plan, render_show, show_view
from shoal.router.plan import diff
from shoal.router.topology import parse_topology

TOPO = parse_topology(
    """
cluster: local
epoch: 3
brokers:
  - {id: 1, url: "http://127.0.0.1:9091"}
  - {id: 2, url: "http://127.0.0.1:9092", data_dir: /srv/b2}
topics:
  orders: {partitions: 4}
  audit: {partitions: 1, flush: always, retention_ms: null}
"""
)


def test_table_layout():
    assert table(["id", "long-name"], [[1, None], [22, ["a", "b"]], [3, True]]) == (
        "ID  LONG-NAME\n"
        "1   -\n"
        "22  a,b\n"
        "3   yes\n"
    )
    assert key_values([("name", "x"), ("total-lag", 0)]) == "NAME       x\nTOTAL-LAG  0\n"
    assert sections([("ONLY", "body\n"), ("EMPTY", "")]) == "body\n"
    assert sections([("A", "a\n"), ("B", "b\n")]) == "A\na\n\nB\nb\n"


def test_cluster_info_text_and_json():
    states = [BrokerState("http://127.0.0.1:9091", 1, 3, TOPO), BrokerState("http://127.0.0.1:9092", error="connection refused")]
    view = info_view(TOPO, states)
    assert render_info(view) == (
        "CLUSTER\n"
        "NAME   local\n"
        "EPOCH  3\n"
        "\n"
        "BROKERS\n"
        "ID  URL                    STATUS  EPOCH  ERROR\n"
        "1   http://127.0.0.1:9091  ok      3      -\n"
        "2   http://127.0.0.1:9092  down    -      connection refused\n"
        "\n"
        "TOPICS\n"
        "NAME    PARTITIONS  OWNERS\n"
        "audit   1           1\n"
        "orders  4           1,2,1,1\n"
    )
    assert json.loads(to_json(view)) == {
        "cluster": "local",
        "epoch": 3,
        "brokers": [
            {"id": 1, "url": "http://127.0.0.1:9091", "status": "ok", "epoch": 3, "error": None},
            {"id": 2, "url": "http://127.0.0.1:9092", "status": "down", "epoch": None, "error": "connection refused"},
        ],
        "topics": [
            {"name": "audit", "partitions": 1, "owners": [1]},
            {"name": "orders", "partitions": 4, "owners": [1, 2, 1, 1]},
        ],
    }


def test_cluster_info_hides_the_error_column_when_all_are_up():
    view = info_view(TOPO, [BrokerState(b.url, b.id, 3, TOPO) for b in TOPO.brokers])
    assert "BROKERS\nID  URL                    STATUS  EPOCH\n1   http://127.0.0.1:9091  ok      3\n" in render_info(view)


def test_cluster_up_table():
    view = {"brokers": [{"id": 1, "url": "http://127.0.0.1:9091", "pid": 42, "data_dir": "data/broker-1",
                         "log": "data/broker-1.log"}]}  # fmt: skip
    assert render_up(view) == (
        "ID  URL                    PID  DATA-DIR       LOG\n"
        "1   http://127.0.0.1:9091  42   data/broker-1  data/broker-1.log\n"
    )


def test_topology_show():
    view = show_view(TOPO)
    assert view["brokers"][1] == {"id": 2, "url": "http://127.0.0.1:9092", "data_dir": "/srv/b2"}
    assert render_show(view) == (
        "CLUSTER\n"
        "NAME   local\n"
        "EPOCH  3\n"
        "\n"
        "BROKERS\n"
        "ID  URL                    DATA-DIR\n"
        "1   http://127.0.0.1:9091  data/broker-1\n"
        "2   http://127.0.0.1:9092  /srv/b2\n"
        "\n"
        "TOPICS\n"
        "NAME    PARTITIONS  FLUSH     RETENTION-MS  RETENTION-BYTES  SEGMENT-BYTES  OWNERS\n"
        "audit   1           always    -             -                134217728      1\n"
        "orders  4           interval  604800000     -                134217728      1,2,1,1\n"
    )


def plan_view():
    new = parse_topology(
        """
cluster: local
epoch: 4
brokers:
  - {id: 1, url: "http://127.0.0.1:9091"}
  - {id: 2, url: "http://127.0.0.1:9092"}
topics:
  orders: {partitions: 3}
  payments: {partitions: 2}
""",
        "new.yaml",
    )
    plan = diff(TOPO, new)
    hws = {TP("orders", 3): 12}
    return plan.to_dict(hws, plan.refusals(hws, delete_topics=True))


def test_topology_plan():
    view = plan_view()
    assert render_plan(view) == (
        "cluster local: epoch 3 -> 4\n"
        "\n"
        "CHANGES\n"
        "- topic audit: 1 partitions\n"
        "~ topic orders: partitions 4 -> 3\n"
        "+ topic payments: 2 partitions\n"
        "\n"
        "MOVES\n"
        "PARTITION  FROM  TO         HIGH-WATERMARK\n"
        "orders/3   1     (removed)  12\n"
        "\n"
        "REFUSED\n"
        "orders/3 holds data (high watermark 12) and would be removed\n"
    )
    assert view["moves"] == [{"topic": "orders", "partition": 3, "from": 1, "to": None, "high_watermark": 12}]


def test_topology_apply_and_no_changes():
    view = diff(TOPO, TOPO).to_dict({}, [])
    view["brokers"] = [{"id": 1, "url": "http://127.0.0.1:9091", "status": "OK (already at epoch 3)"},
                       {"id": 2, "url": "http://127.0.0.1:9092", "status": "UNREACHABLE: connection refused"}]  # fmt: skip
    assert render_apply(view) == (
        "cluster local: epoch 3 -> 3\n"
        "\n"
        "CHANGES\n"
        "no changes\n"
        "\n"
        "BROKERS\n"
        "ID  URL                    STATUS\n"
        "1   http://127.0.0.1:9091  OK (already at epoch 3)\n"
        "2   http://127.0.0.1:9092  UNREACHABLE: connection refused\n"
    )


def test_topic_rows_list_and_describe():
    rows = {"topics": [{"name": "a", "status": "OK", "detail": ""},
                       {"name": "orders", "status": "TOPIC_ALREADY_EXISTS", "detail": "cluster.yaml already has topic orders"}]}  # fmt: skip
    assert render_topic_rows(rows) == (
        "TOPIC   STATUS\n"
        "a       OK\n"
        "orders  TOPIC_ALREADY_EXISTS: cluster.yaml already has topic orders\n"
    )
    listed = [{"name": n, **TOPO.topics[n].to_dict()} for n in sorted(TOPO.topics)]
    assert render_topics(listed) == (
        "NAME    PARTITIONS  FLUSH     RETENTION-MS\n"
        "audit   1           always    -\n"
        "orders  4           interval  604800000\n"
    )
    described = [{
        "name": "audit",
        "config": TOPO.topics["audit"].to_dict(),
        "partitions": [{"partition": 0, "owner": 1, "log_start_offset": 0, "high_watermark": 7, "error": None}],
    }]  # fmt: skip
    assert render_topic(described) == (
        "NAME                     audit\n"
        "PARTITIONS               1\n"
        "FLUSH                    always\n"
        "FLUSH-INTERVAL-MS        200\n"
        "SEGMENT-BYTES            134217728\n"
        "RETENTION-MS             -\n"
        "RETENTION-BYTES          -\n"
        "REPLICATION-FACTOR       1\n"
        "MIN-INSYNC-REPLICAS      1\n"
        "UNCLEAN-LEADER-ELECTION  no\n"
        "MAX-FUTURE-MS            3600000\n"
        "\n"
        "PARTITION  OWNER  LOG-START-OFFSET  HIGH-WATERMARK\n"
        "0          1      0                 7\n"
    )


def test_record_view_uses_base64_only_for_binary():
    record = Record("t", 1, 5, b"\xff\x00", "héllo".encode(), 1000, {"h": b"x"})
    assert record_view(record) == {"topic": "t", "partition": 1, "offset": 5, "timestamp": 1000,
                                   "key_b64": "/wA=", "value": "héllo", "headers": {"h": "x"}}  # fmt: skip
    assert record_view(Record("t", 0, 0, None, None, 1, {}))["value"] is None


GROUP_ROWS = [
    {"group": "billing", "topic": "orders", "partition": 0, "offset": 10, "metadata": "", "high_watermark": 12, "lag": 2},
    {"group": "billing", "topic": "orders", "partition": 1, "offset": 0, "metadata": "m", "high_watermark": 0, "lag": 0},
    {"group": "audit", "topic": "audit", "partition": 0, "offset": 3, "metadata": "", "high_watermark": None, "lag": None},
]


def test_group_list():
    view = list_view(GROUP_ROWS)
    assert view == [
        {"group": "billing", "topics": ["orders"], "partitions": 2, "lag": 2},
        {"group": "audit", "topics": ["audit"], "partitions": 1, "lag": 0},
    ]
    assert render_list(view) == (
        "GROUP    TOPICS  PARTITIONS  LAG\n"
        "billing  orders  2           2\n"
        "audit    audit   1           0\n"
    )


def test_group_describe_shows_metadata_only_when_used():
    view = describe_view("billing", GROUP_ROWS[:2])
    assert view["total_lag"] == 2
    assert render_describe(view) == (
        "GROUP      billing\n"
        "STATE      unknown\n"
        "TOTAL-LAG  2\n"
        "\n"
        "TOPIC   PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG  METADATA\n"
        "orders  0          10              12              2\n"
        "orders  1          0               0               0    m\n"
    )
    assert "METADATA" not in render_describe(describe_view("billing", GROUP_ROWS[:1]))


def test_group_describe_with_members():
    members = {
        "state": "stable", "generation": 4, "coordinator": 2,
        "members": [
            {"member_id": "member-a1", "group_instance_id": None, "assignment": {"orders": [0]}, "last_heartbeat_ms_ago": 120},
            {"member_id": "member-b2", "group_instance_id": None, "assignment": {"orders": [1]}, "last_heartbeat_ms_ago": 80},
        ],
    }
    view = describe_view("billing", GROUP_ROWS[:2], members)
    assert [p["member"] for p in view["partitions"]] == ["member-a1", "member-b2"]
    assert render_describe(view) == (
        "GROUP        billing\n"
        "STATE        stable\n"
        "GENERATION   4\n"
        "COORDINATOR  2\n"
        "TOTAL-LAG    2\n"
        "\n"
        "MEMBERS\n"
        "MEMBER-ID  PARTITIONS  LAST-HEARTBEAT\n"
        "member-a1  orders:0    120\n"
        "member-b2  orders:1    80\n"
        "\n"
        "PARTITIONS\n"
        "TOPIC   PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG  MEMBER     METADATA\n"
        "orders  0          10              12              2    member-a1\n"
        "orders  1          0               0               0    member-b2  m\n"
    )


def test_group_seek_plan_and_execution():
    rows = [{"topic": "orders", "partition": 0, "current_offset": 10, "new_offset": 0, "status": "PLANNED"}]
    assert render_seek({"group": "g", "executed": False, "partitions": rows}) == (
        "TOPIC   PARTITION  CURRENT-OFFSET  NEW-OFFSET\n"
        "orders  0          10              0\n"
    )
    rows = [dict(rows[0], status="OK"), {"topic": "orders", "partition": 1, "current_offset": None,
                                         "new_offset": None, "status": "ERROR: no committed offset to shift"}]  # fmt: skip
    assert render_seek({"group": "g", "executed": True, "partitions": rows}) == (
        "TOPIC   PARTITION  CURRENT-OFFSET  NEW-OFFSET  STATUS\n"
        "orders  0          10              0           OK\n"
        "orders  1          -               -           ERROR: no committed offset to shift\n"
    )


def test_new_offsets_are_clamped_to_the_log():
    bounds = {"log_start_offset": 5, "high_watermark": 20}
    assert new_offset("earliest", None, 9, bounds) == 5
    assert new_offset("latest", None, 9, bounds) == 20
    assert new_offset("offset", 2, 9, bounds) == 5
    assert new_offset("offset", 99, 9, bounds) == 20
    assert new_offset("shift", -3, 9, bounds) == 6
    assert new_offset("shift", -30, 9, bounds) == 5
    assert new_offset("timestamp", 1, 9, {**bounds, "offset": 11}) == 11
    assert new_offset("timestamp", 1, 9, {**bounds, "offset": None}) == 20
