"""A three-broker cluster with Kafka listeners, shared by the tests of one module."""

from __future__ import annotations

import pytest

from tests.harness import LocalCluster


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    """Three brokers with ``kafka:`` listeners and the module's ``TOPICS`` (name -> partitions)."""
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    cluster = LocalCluster(root, 3, request.module.TOPICS, kafka=True)
    try:
        cluster.start(timeout=60)  # kio's first import is slow on a loaded machine
        yield cluster
    finally:
        cluster.stop()  # also when a broker never became healthy: leave no process behind
