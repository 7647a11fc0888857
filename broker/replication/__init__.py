"""Replication: the broker's side of the metadata in etcd (``membership``)."""

import asyncio


async def woken_or_due(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass, then clear it: the pace of a loop
    that acts on changes as they come and looks at everything on a timer."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass
    event.clear()
