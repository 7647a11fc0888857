"""Helpers shared by the client's integration tests (tests/integration/test_client_*.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from shoal.client import AsyncConsumer
from shoal.client.structs import Record, TopicPartition


async def read_exactly(
    bootstrap, partitions: Iterable[TopicPartition], count: int, *, timeout: float = 30, **config
) -> list[Record]:
    """Read ``partitions`` from the start until ``count`` records came, then check nothing more comes."""
    consumer = AsyncConsumer(bootstrap=bootstrap, fetch_max_wait_ms=100, **config)
    consumer.assign(partitions)
    got: list[Record] = []
    try:
        async with asyncio.timeout(timeout):
            while len(got) < count:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    got.extend(records)
        extra = await consumer.getmany(timeout_ms=300)
        got.extend(r for records in extra.values() for r in records)
    finally:
        await consumer.close()
    return got


def all_partitions(topic: str, n: int) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in range(n)]
