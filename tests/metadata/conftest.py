"""Fixtures of the metadata tests: a client of the session's real etcd, a cluster name of a test's own."""

from __future__ import annotations

import uuid

import pytest

from shoal.router.metadata.etcd import EtcdClient


@pytest.fixture
async def etcd(etcd_server):
    async with EtcdClient([etcd_server.url]) as client:
        yield client


@pytest.fixture
def cluster_name() -> str:
    """A cluster name no other test uses, so tests can share the session's etcd."""
    return f"t-{uuid.uuid4().hex[:10]}"
