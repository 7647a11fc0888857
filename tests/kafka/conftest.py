"""One static three-broker cluster with Kafka listeners, shared by the modules of tests/kafka
that need nothing else (a cluster start is most of their time); each keeps to its topics."""

from __future__ import annotations

import pytest

from tests.harness import LocalCluster

TOPICS = {
    # test_clients
    "confluent": 3, "kpython": 3, "aio": 3, "kcat": 3, "shared": 4,
    # test_cross_protocol
    "from-shoal": 1, "from-kafka": 1, "gzip": 1, "snappy": 1, "lz4": 1, "zstd": 1, "keys": 7,
    # test_protocol
    "t": 1, "w": 3, "fetch-budget": 6,
}


@pytest.fixture(scope="package")
def cluster(tmp_path_factory):
    """Three brokers with ``kafka:`` listeners and ``TOPICS``."""
    cluster = LocalCluster(tmp_path_factory.mktemp("kafka"), 3, TOPICS, kafka=True)
    try:
        cluster.start(timeout=60)
        yield cluster
    finally:
        cluster.stop()  # also when a broker never became healthy: leave no process behind
