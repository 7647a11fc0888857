"""A cluster shared by the tests of one module, for modules whose tests use their own topics."""

from __future__ import annotations

import pytest

from tests.harness import LocalCluster


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    """Three brokers with the module's ``TOPICS`` (name -> partitions), started once per module."""
    cluster = LocalCluster(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]), 3, request.module.TOPICS)
    cluster.start()
    yield cluster
    cluster.stop()
