"""Helpers of the metadata tests."""

from __future__ import annotations

import asyncio


async def poll(check, timeout: float = 10.0, interval: float = 0.05):
    """Await ``check()`` until it returns something truthy (returned), failing after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(interval)
    return result
