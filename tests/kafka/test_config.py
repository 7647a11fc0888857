"""``brokers[].kafka`` in cluster.yaml."""

from __future__ import annotations

import pytest

from shoal.router.topology import TopologyError, parse_topology

BASE = "cluster: c\nbrokers:\n  - {id: 1, url: 'http://127.0.0.1:9091', kafka: %s}\n"


def test_the_kafka_address_is_parsed_and_kept_over_the_wire():
    topology = parse_topology(BASE % "'127.0.0.1:9191'")
    assert topology.broker(1).kafka_address == ("127.0.0.1", 9191)
    again = type(topology).from_dict(topology.to_dict())
    assert again.broker(1).kafka == "127.0.0.1:9191"
    assert parse_topology(topology.to_yaml()).broker(1).kafka == "127.0.0.1:9191"
    assert parse_topology("brokers: [{id: 1, url: 'http://h:1'}]").broker(1).kafka_address is None


@pytest.mark.parametrize("value", ["9191", "'host:'", "'host:0'", "'host:70000'", "'http://h:1'", "[1]"])
def test_a_bad_kafka_address_is_refused_with_its_field(value):
    with pytest.raises(TopologyError, match=r"brokers\[0\]\.kafka.*host:port"):
        parse_topology(BASE % value)
