"""cluster.yaml loading: every validation problem, reported all at once, and round trips."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from shoal.client.errors import UnknownPartition, UnknownTopic
from shoal.router import hashing
from shoal.router.topology import (
    BrokerSpec,
    Settings,
    TopicConfig,
    Topology,
    TopologyError,
    load_topology,
    parse_topology,
)

REPO_CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"

GOOD = """\
cluster: local
epoch: 4
defaults:
  partitions: 3
  flush: interval
  flush_interval_ms: 100
brokers:
  - id: 1
    url: http://127.0.0.1:9091
  - id: 2
    url: http://127.0.0.1:9092/
    data_dir: /srv/shoal/b2
topics:
  orders: {partitions: 6}
  events:
  audit: {partitions: 1, flush: always, retention_ms: null}
settings:
  max_wait_ms: 5000
"""


def problems(text: str, source: str = "cluster.yaml") -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(textwrap.dedent(text), source)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_good_file_builds_resolved_configs():
    topo = parse_topology(GOOD, "cluster.yaml")
    assert topo.cluster == "local" and topo.epoch == 4
    assert topo.brokers == (
        BrokerSpec(1, "http://127.0.0.1:9091", "data/broker-1"),
        BrokerSpec(2, "http://127.0.0.1:9092", "/srv/shoal/b2"),
    )
    assert topo.topics["orders"] == TopicConfig(partitions=6, flush="interval", flush_interval_ms=100)
    assert topo.topics["events"] == TopicConfig(partitions=3, flush_interval_ms=100)
    assert topo.topics["audit"] == TopicConfig(partitions=1, flush="always", flush_interval_ms=100, retention_ms=None)
    assert topo.settings == Settings(max_wait_ms=5000)
    assert topo.source == "cluster.yaml"
    assert (topo.brokers[1].host, topo.brokers[1].port) == ("127.0.0.1", 9092)


def test_repository_cluster_yaml_is_valid():
    topo = load_topology(REPO_CLUSTER_YAML)
    assert [b.port for b in topo.brokers] == [9091, 9092, 9093]
    assert {"orders", "events", "audit"} <= set(topo.topics)
    assert topo.topics["audit"].flush == "always"


def test_owner_lookup_follows_rendezvous_hashing():
    topo = parse_topology(GOOD)
    for p in range(6):
        expected = hashing.owner("orders", p, [1, 2])
        assert topo.owner("orders", p).id == expected
        assert topo.owners("orders")[p] == expected
    owned = topo.owned(1) + topo.owned(2)
    assert sorted(owned) == sorted((t, p) for t, c in topo.topics.items() for p in range(c.partitions))


def test_lookups_raise_typed_errors():
    topo = parse_topology(GOOD)
    with pytest.raises(UnknownTopic) as info:
        topo.topic("nope")
    assert info.value.topic == "nope"
    with pytest.raises(UnknownTopic):
        topo.owners("nope")
    with pytest.raises(UnknownPartition) as info:
        topo.owner("orders", 6)
    assert (info.value.partition, info.value.partitions) == (6, 6)
    with pytest.raises(UnknownPartition):
        topo.owner("orders", -1)
    with pytest.raises(KeyError):
        topo.broker(9)
    assert topo.broker(2).url == "http://127.0.0.1:9092"


def test_yaml_syntax_error_names_file_and_line():
    assert problems("cluster: local\nbrokers: [\n  {id: 1\n: x\n") == [
        "cluster.yaml:4: invalid YAML: expected ',' or '}', but got ':'"
    ]


def test_top_level_must_be_a_mapping():
    assert problems("- 1\n- 2\n") == [
        "cluster.yaml:1: must be a mapping with cluster, epoch, defaults, brokers, topics, settings, auth, tls, metadata, "
        "got [1, 2]"
    ]


def test_empty_file_needs_brokers():
    assert problems("") == ["cluster.yaml: brokers: at least one broker is needed"]


def test_every_problem_is_reported_at_once_with_lines():
    text = """\
    cluster: "bad name"
    epoch: -1
    colour: blue
    defaults:
      flush: sometimes
      partitions: 0
    brokers:
      - id: 1
        url: http://127.0.0.1:9091
      - id: 1
        url: http://127.0.0.1:9091
      - id: two
        url: ftp://h:1
      - url: http://localhost
        port: 3
      - id: 5
        url: http://[::1]:99999
      - 7
    topics:
      orders: {partitions: 0, flush: true}
      "a/b": {}
      "..": {}
      123: {}
      ok: {retention_bytes: 0, segment_bytes: "1GB", partitons: 2}
    settings:
      max_wait_ms: yes
      max_bytes: 1
    """
    assert problems(text) == [
        "cluster.yaml:1: cluster: must be a name of 1-249 characters of A-Z a-z 0-9 . _ -, got 'bad name'",
        "cluster.yaml:2: epoch: must be an integer >= 0, got -1",
        "cluster.yaml:3: colour: unknown key (expected one of: cluster, epoch, defaults, brokers, topics, settings, auth, tls, "
        "metadata)",
        "cluster.yaml:5: defaults.flush: must be one of always, interval, never, got 'sometimes'",
        "cluster.yaml:6: defaults.partitions: must be an integer >= 1, got 0",
        "cluster.yaml:10: brokers[1].id: duplicate broker id 1 (also brokers[0])",
        "cluster.yaml:11: brokers[1].url: duplicate url http://127.0.0.1:9091 (also brokers[0])",
        "cluster.yaml:12: brokers[2].id: must be an integer >= 0, got 'two'",
        "cluster.yaml:13: brokers[2].url: must be an http:// or https:// URL with a host and a port, got 'ftp://h:1'",
        "cluster.yaml:14: brokers[3]: missing id",
        "cluster.yaml:14: brokers[3].url: must be an http:// or https:// URL with a host and a port, "
        "got 'http://localhost' (no port)",
        "cluster.yaml:15: brokers[3].port: unknown key (expected one of: id, url, data_dir, kafka)",
        "cluster.yaml:17: brokers[4].url: must be an http:// or https:// URL with a host and a port, "
        "got 'http://[::1]:99999' (Port out of range 0-65535)",
        "cluster.yaml:18: brokers[5]: must be a mapping with id and url, got 7",
        "cluster.yaml:20: topics.orders.partitions: must be an integer >= 1, got 0",
        "cluster.yaml:20: topics.orders.flush: must be one of always, interval, never, got True",
        "cluster.yaml:21: topics.a/b: invalid topic name 'a/b': use 1-249 characters of A-Z a-z 0-9 . _ - "
        "(not '.' or '..'), quoted if YAML would read it as a number",
        "cluster.yaml:22: topics...: invalid topic name '..': use 1-249 characters of A-Z a-z 0-9 . _ - "
        "(not '.' or '..'), quoted if YAML would read it as a number",
        "cluster.yaml:23: topics.123: invalid topic name 123: use 1-249 characters of A-Z a-z 0-9 . _ - "
        "(not '.' or '..'), quoted if YAML would read it as a number",
        "cluster.yaml:24: topics.ok.partitons: unknown key (expected one of: partitions, flush, "
        "flush_interval_ms, segment_bytes, retention_ms, retention_bytes, "
        "replication_factor, min_insync_replicas, unclean_leader_election, max_future_ms)",
        "cluster.yaml:24: topics.ok.retention_bytes: must be null or an integer >= 1, got 0",
        "cluster.yaml:24: topics.ok.segment_bytes: must be an integer from 1 to 2147483647, got '1GB'",
        "cluster.yaml:26: settings.max_wait_ms: must be an integer >= 1, got True",
        "cluster.yaml:27: settings.max_bytes: unknown key (expected one of: "
        "max_request_bytes, max_batch_bytes, max_wait_ms, max_fetch_bytes, max_connections, max_long_polls, "
        "max_buffered_bytes, body_timeout_ms, max_queue_bytes, producer_expiry_ms, group_max_size, group_empty_retention_ms)",
    ]


@pytest.mark.parametrize(
    "url, why",
    [
        ("127.0.0.1:9091", ""),
        ("http://:9091", " (no host)"),
        ("http://h:0", " (no port)"),
        ("http://h:x", " (Port could not be cast to integer value as 'x')"),
        (42, ""),
    ],
)
def test_bad_urls(url, why):
    text = f"brokers: [{{id: 1, url: {json.dumps(url)}}}]\n"
    assert problems(text) == [
        f"cluster.yaml:1: brokers[0].url: must be an http:// or https:// URL with a host and a port, got {url!r}{why}"
    ]


def test_url_with_a_path_is_refused():
    assert problems('brokers: [{id: 1, url: "https://h:1/api?x=1"}]\n') == [
        "cluster.yaml:1: brokers[0].url: must be an http:// or https:// URL with a host and a port "
        "and nothing else, got 'https://h:1/api?x=1'"
    ]


def test_duplicate_yaml_keys_are_reported():
    text = """\
    brokers: [{id: 1, url: "http://h:1"}]
    topics:
      orders: {partitions: 2}
      orders: {partitions: 3}
    """
    assert problems(text) == ["cluster.yaml:4: topics: duplicate key 'orders'"]


def test_wrong_container_types():
    text = """\
    defaults: 3
    brokers: {id: 1}
    topics: [orders]
    settings: fast
    """
    assert problems(text) == [
        "cluster.yaml:1: defaults: must be a mapping, got 3",
        "cluster.yaml:2: brokers: must be a list of brokers, got {'id': 1}",
        "cluster.yaml:3: topics: must be a mapping of topic name to config, got ['orders']",
        "cluster.yaml:4: settings: must be a mapping, got 'fast'",
    ]


def test_data_dir_must_be_a_path():
    assert problems('brokers: [{id: 1, url: "http://h:1", data_dir: ""}]\n') == [
        "cluster.yaml:1: brokers[0].data_dir: must be a non-empty path, got ''"
    ]


def test_owners_are_not_configurable_in_yaml():
    assert problems('brokers: [{id: 1, url: "http://h:1"}]\nowners: {t: [1]}\n') == [
        "cluster.yaml:2: owners: unknown key (expected one of: cluster, epoch, defaults, brokers, topics, settings, auth, tls, "
        "metadata)"
    ]


def test_from_dict_reports_paths_without_lines():
    with pytest.raises(TopologyError) as info:
        Topology.from_dict({"epoch": "2", "brokers": [{"id": 1, "url": "http://h:1"}]})
    assert info.value.problems == ["<request>: epoch: must be an integer >= 0, got '2'"]


def test_load_missing_file_is_a_topology_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(TopologyError) as info:
        load_topology(missing)
    assert info.value.problems == [f"{missing}: cannot read the topology: No such file or directory"]


def test_load_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("brokers: []\n")
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert info.value.problems == [f"{path}:1: brokers: at least one broker is needed"]


def test_to_dict_is_the_cluster_body():
    topo = parse_topology(GOOD)
    body = topo.to_dict()
    assert list(body) == ["cluster", "epoch", "brokers", "topics", "owners", "defaults", "settings"]
    assert body["brokers"] == [{"id": 1, "url": "http://127.0.0.1:9091"}, {"id": 2, "url": "http://127.0.0.1:9092"}]
    assert body["topics"]["audit"] == {
        "partitions": 1,
        "flush": "always",
        "flush_interval_ms": 100,
        "segment_bytes": 134217728,
        "retention_ms": None,
        "retention_bytes": None,
        "replication_factor": 1,
        "min_insync_replicas": 1,
        "unclean_leader_election": False,
        "max_future_ms": 3600000,
    }
    assert body["owners"]["orders"] == topo.owners("orders")
    assert json.loads(json.dumps(body)) == body


def test_from_dict_round_trip_keeps_everything_but_data_dirs():
    topo = parse_topology(GOOD)
    again = Topology.from_dict(json.loads(json.dumps(topo.to_dict())))
    assert again.brokers[1].data_dir == "data/broker-2"
    assert again == Topology(
        topo.cluster,
        topo.epoch,
        (topo.brokers[0], BrokerSpec(2, topo.brokers[1].url, "data/broker-2")),
        topo.topics,
        topo.defaults,
        topo.settings,
    )


def test_to_yaml_round_trip_and_is_readable():
    topo = parse_topology(GOOD)
    text = topo.to_yaml()
    assert parse_topology(text) == topo
    assert "  audit: {partitions: 1, flush: always, retention_ms: null}\n" in text
    assert "  events: {}\n" in text
    assert "  data_dir: /srv/shoal/b2\n" in text
    assert text.count("data_dir") == 1


def test_to_yaml_without_topics():
    topo = parse_topology('brokers: [{id: 0, url: "http://h:1"}]\n')
    assert "topics: {}\n" in topo.to_yaml()
    assert parse_topology(topo.to_yaml()) == topo


REPLICATED = """\
cluster: local
defaults: {replication_factor: 3, min_insync_replicas: 2}
brokers:
  - {id: 1, url: "http://127.0.0.1:9091"}
  - {id: 2, url: "http://127.0.0.1:9092"}
  - {id: 3, url: "http://127.0.0.1:9093"}
  - {id: 4, url: "http://127.0.0.1:9094"}
topics:
  orders: {partitions: 6}
  audit: {partitions: 2, replication_factor: 1, min_insync_replicas: 1}
  logs: {replication_factor: 2, unclean_leader_election: true}
metadata:
  etcd: [http://127.0.0.1:2379]
  start_local: true
"""


def test_replicated_topology_reads_metadata_and_factors():
    topo = parse_topology(REPLICATED)
    assert topo.replicated and not parse_topology(GOOD).replicated
    assert topo.metadata.etcd == ("http://127.0.0.1:2379",)
    assert topo.metadata.start_local and topo.metadata.lease_ttl_ms == 3000 and topo.metadata.tls is None
    assert topo.topics["orders"].replication_factor == 3 and topo.topics["orders"].min_insync_replicas == 2
    assert topo.topics["audit"].replication_factor == 1
    assert topo.topics["logs"].unclean_leader_election and not topo.topics["orders"].unclean_leader_election
    assert parse_topology(GOOD).topics["orders"].replication_factor == 1


def test_replicas_are_the_head_of_the_rendezvous_ranking():
    topo = parse_topology(REPLICATED)
    for p in range(6):
        ranking = hashing.rank("orders", p, [1, 2, 3, 4])
        assert topo.replicas("orders", p) == ranking[:3]
        assert topo.preferred_leader("orders", p) == ranking[0] == topo.owner("orders", p).id
    assert topo.replicas("audit", 1) == [topo.owner("audit", 1).id]
    assert len(topo.replicas("logs", 0)) == 2
    with pytest.raises(UnknownPartition):
        topo.replicas("orders", 6)
    with pytest.raises(UnknownTopic):
        topo.preferred_leader("nope", 0)


def test_replication_needs_metadata():
    text = REPLICATED.split("metadata:")[0]
    assert problems(text) == [
        "cluster.yaml:2: defaults.replication_factor: is 3, but a cluster without a metadata: section (etcd) "
        "keeps one replica per partition",
        "cluster.yaml:11: topics.logs.replication_factor: is 2, but a cluster without a metadata: section (etcd) "
        "keeps one replica per partition",
    ]


def test_replica_counts_are_checked_where_they_are_set():
    text = """\
        defaults:
          replication_factor: 3
          min_insync_replicas: 4
        brokers: [{id: 1, url: "http://h:1"}, {id: 2, url: "http://h:2"}]
        topics:
          a: {}
          b: {replication_factor: 1}
          c:
            min_insync_replicas: 2
          d: {replication_factor: 0}
        metadata: {etcd: [http://h:2379]}
        """
    assert problems(text) == [
        "cluster.yaml:2: defaults.replication_factor: is 3, more than the 2 brokers",
        "cluster.yaml:3: defaults.min_insync_replicas: is 4, more than replication_factor 3",
        "cluster.yaml:7: topics.b.min_insync_replicas: is 4, more than replication_factor 1",
        "cluster.yaml:9: topics.c.replication_factor: is 3, more than the 2 brokers",
        "cluster.yaml:10: topics.d.replication_factor: must be an integer >= 1, got 0",
    ]


def test_metadata_section_problems():
    text = """\
        brokers: [{id: 1, url: "http://h:1"}]
        metadata:
          etcd: [http://a:2379, "ftp://b:1", http://c]
          start_local: yes please
          lease_ttl_ms: 2500
          tls: {ca_file: "", cert_file: c.pem}
          peers: 3
        """
    assert problems(text) == [
        "cluster.yaml:3: metadata.etcd[1]: must be an http:// or https:// URL with a host and a port, got 'ftp://b:1'",
        "cluster.yaml:3: metadata.etcd[2]: must be an http:// or https:// URL with a host and a port, got 'http://c'",
        "cluster.yaml:4: metadata.start_local: must be true or false, got 'yes please'",
        "cluster.yaml:5: metadata.lease_ttl_ms: must be a whole number of seconds in ms, >= 2000 "
        "(etcd leases count seconds), got 2500",
        "cluster.yaml:6: metadata.tls.ca_file: must be a file path, got ''",
        "cluster.yaml:6: metadata.tls: cert_file and key_file go together: set both or neither",
        "cluster.yaml:6: metadata.tls: is set, so every etcd endpoint must be https://",
        "cluster.yaml:7: metadata.peers: unknown key (expected one of: etcd, start_local, lease_ttl_ms, "
            "replica_lag_time_max_ms, tls)",
    ]


def test_start_local_needs_one_plain_endpoint():
    two = 'brokers: [{id: 1, url: "http://h:1"}]\nmetadata: {etcd: [http://a:1, http://b:2], start_local: true}\n'
    assert problems(two) == ["cluster.yaml:2: metadata.etcd: start_local runs one etcd, so list exactly one endpoint, not 2"]
    tls = 'brokers: [{id: 1, url: "http://h:1"}]\nmetadata: {etcd: [https://a:1], start_local: true}\n'
    assert problems(tls) == ["cluster.yaml:2: metadata.etcd: start_local runs a plain-http etcd, so its endpoint must be http://"]


def test_metadata_with_tls_round_trips_through_yaml():
    text = """\
        brokers: [{id: 1, url: "http://h:1"}]
        metadata:
          etcd: [https://e1:2379, https://e2:2379]
          lease_ttl_ms: 5000
          tls: {ca_file: ca.pem, cert_file: c.pem, key_file: c.key}
        """
    topo = parse_topology(textwrap.dedent(text))
    assert topo.metadata.etcd == ("https://e1:2379", "https://e2:2379") and topo.metadata.lease_ttl_ms == 5000
    assert (topo.metadata.tls.ca_file, topo.metadata.tls.cert_file, topo.metadata.tls.key_file) == ("ca.pem", "c.pem", "c.key")
    assert parse_topology(topo.to_yaml()) == topo


def test_metadata_stays_local_and_api_documents_keep_their_factors():
    topo = parse_topology(REPLICATED)
    body = topo.to_dict()
    assert "metadata" not in body
    # A broker or the gateway reading another process's body has no metadata section of its own to show.
    again = Topology.from_dict(json.loads(json.dumps(body)))
    assert again.topics == topo.topics and again.metadata is None
    # A replicated broker's GET /v1/cluster adds partition states from etcd: read and ignored.
    states = {"orders": [{"leader": 1, "leader_epoch": 0, "replicas": [1, 2, 3], "isr": [1, 2, 3]}] * 6}
    assert Topology.from_dict({**body, "partitions": states}) == again
    with pytest.raises(TopologyError) as info:
        Topology.from_dict({**body, "metadata": {"etcd": ["http://h:1"]}})
    assert info.value.problems == [
        "<request>: metadata: is read from each process's cluster.yaml at start-up, never installed over the API"
    ]


def test_replica_lag_time_must_be_a_whole_number_of_ms():
    text = """\
        brokers: [{id: 1, url: "http://h:1"}]
        metadata: {etcd: [http://h:2379], replica_lag_time_max_ms: 50}
        """
    assert problems(text) == [
        "cluster.yaml:2: metadata.replica_lag_time_max_ms: must be a whole number of ms >= 100, got 50",
    ]


def test_internal_topic_names_are_reserved():
    text = """\
    cluster: local
    brokers: [{id: 1, url: "http://127.0.0.1:9091"}]
    topics:
      __consumer_offsets: {}
      __mine: {partitions: 2}
      _one: {}
    """
    reserved = "names starting with '__' are reserved for internal topics (__consumer_offsets)"
    assert problems(text) == [
        f"cluster.yaml:4: topics.__consumer_offsets: invalid topic name '__consumer_offsets': {reserved}",
        f"cluster.yaml:5: topics.__mine: invalid topic name '__mine': {reserved}",
    ]
