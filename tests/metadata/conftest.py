"""Fixtures of the metadata tests: a client of the session's real etcd."""

from __future__ import annotations

import pytest

from shoal.router.metadata.etcd import EtcdClient


@pytest.fixture
async def etcd(etcd_server):
    async with EtcdClient([etcd_server.url]) as client:
        yield client
