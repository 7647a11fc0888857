"""Fixtures shared by the storage tests."""

from __future__ import annotations

import pytest

from shoal.broker.storage import LogConfig, PartitionLog


@pytest.fixture
async def open_log(tmp_path):
    """``await open_log(**LogConfig fields)``: a started log of t/0 in a temp dir, stopped after the test."""
    logs = []

    async def make(**config) -> PartitionLog:
        plog = PartitionLog(tmp_path / "t-0", "t", 0, LogConfig(**config))
        await plog.start()
        logs.append(plog)
        return plog

    yield make
    for plog in logs:
        await plog.stop()
