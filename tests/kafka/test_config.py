"""``brokers[].kafka`` in cluster.yaml, and a listener that will not run without enforcing auth."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from shoal.router.server.auth import hash_token
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


def test_a_broker_with_auth_and_a_kafka_listener_refuses_to_start(tmp_path):
    config = yaml.safe_load(BASE % "'127.0.0.1:9191'")
    config["auth"] = {"principals": {"ops": {"token_hash": hash_token("o" * 40), "admin": True}}}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "shoal.broker", "--config", str(path), "--id", "1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "Kafka listener cannot enforce auth" in done.stderr
    assert not (tmp_path / "data").exists()  # nothing was started or written
