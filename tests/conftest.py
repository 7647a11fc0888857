"""Shared fixtures: ``cluster_factory`` starts real brokers from a temporary cluster.yaml;
``etcd_server`` is one real etcd for the session, ``etcd_prefix`` a key prefix and
``cluster_name`` a cluster name of a test's own."""

from __future__ import annotations

import shutil
import uuid

import pytest

from tests.harness import EtcdServer, LocalCluster


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


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory):
    """One real etcd for the whole run (minimum lease TTL 1 s); keep to ``etcd_prefix``."""
    if shutil.which("etcd") is None:
        pytest.fail("no etcd binary: apt-get install etcd-server (./dev installs it when run as root)")
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def etcd_prefix(request) -> bytes:
    """A key prefix no other test uses, so tests can share ``etcd_server``."""
    return f"/test/{request.node.name}/{uuid.uuid4().hex[:8]}/".encode()


@pytest.fixture
def cluster_name() -> str:
    """A cluster name no other test uses, so tests can share ``etcd_server``."""
    return f"t-{uuid.uuid4().hex[:10]}"
