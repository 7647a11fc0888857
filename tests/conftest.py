"""Shared fixtures: ``cluster_factory`` starts real brokers from a temporary cluster.yaml."""

from __future__ import annotations

import pytest

from tests.harness import LocalCluster


@pytest.fixture
def cluster_factory(tmp_path):
    """``cluster_factory(n_brokers=3, topics={"t": 12}, **topic_defaults) -> LocalCluster``, started."""
    clusters: list[LocalCluster] = []

    def make(n_brokers: int = 3, topics: dict | None = None, *, start: bool = True, **defaults) -> LocalCluster:
        root = tmp_path / f"cluster-{len(clusters)}"
        root.mkdir()
        cluster = LocalCluster(root, n_brokers, topics, **defaults)
        clusters.append(cluster)
        if start:
            cluster.start()
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()
