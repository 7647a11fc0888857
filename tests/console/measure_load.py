"""Console page load times at 10,000 partitions and 1,000 groups, in headless Chromium.

    python -m tests.console.measure_load [--topics 100] [--partitions 100] [--groups 1000]

Starts three real brokers and a gateway on loopback ports (data in a temporary
directory, removed at the end), writes one record into every partition, commits
offsets of each group on four partitions, then loads each console page from a blank
tab and times it until its data is on screen, and the longest of its API calls as the
browser saw it. "cold" lets the gateway's snapshot go stale first (no page open for
STALE_S, so the gateway asks every broker while the page waits); "warm" is the median
of five loads in a row. Prints a Markdown table for docs/console.md. Numbers, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from shoal.router.console.collector import STALE_S
from tests.console.conftest import make_console
from tests.harness import LocalCluster
from tests.security.procs import start_gateway

WARM_LOADS = 5


async def fill(url: str, topics: list[str], partitions: int, groups: int) -> None:
    """One record per partition (one keyed request per topic), then each group's commits."""
    async with aiohttp.ClientSession() as http:
        limit = asyncio.Semaphore(16)

        async def call(method: str, path: str, body: dict) -> None:
            async with limit, http.request(method, url + path, json=body) as resp:
                assert resp.status == 200, await resp.text()

        await asyncio.gather(*(
            call("POST", f"/v1/topics/{t}/records",
                 {"records": [{"partition": p, "value": f"{t}-{p}"} for p in range(partitions)]})
            for t in topics
        ))
        await asyncio.gather(*(
            call("PUT", f"/v1/groups/group-{g:04d}/topics/{topics[g % len(topics)]}/partitions/{p}/offset",
                 {"offset": g % 2})
            for g in range(groups) for p in range(4)
        ))


def timed_load(console, fragment: str, ready: str) -> tuple[float, float]:
    """Seconds from navigating a blank tab to the console page until ``ready`` (a CSS selector)
    shows, and the longest of the page's API calls (the browser's resource timing)."""
    console.driver.get("about:blank")
    start = time.perf_counter()
    console.open(fragment)
    console.wait(lambda: console.driver.find_elements("css selector", ready), f"{fragment} never showed {ready}", 60)
    shown = time.perf_counter() - start
    calls = console.driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/console/api/')"
        " && !e.name.includes('/session')).map(e => e.duration / 1000)")
    return shown, max(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=100, help="per topic")
    parser.add_argument("--groups", type=int, default=1000)
    args = parser.parse_args()
    topics = [f"topic-{i:03d}" for i in range(args.topics)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster = LocalCluster(root, 3, {t: args.partitions for t in topics})
        cluster.start(timeout=120)
        gateway, url = start_gateway(cluster.config_path, root)
        console = make_console(url)
        try:
            began = time.perf_counter()
            asyncio.run(fill(url, topics, args.partitions, args.groups))
            print(f"filled {len(topics) * args.partitions} partitions and {args.groups} groups "
                  f"in {time.perf_counter() - began:.1f} s")
            pages = [
                ("overview", "/", "[data-stat=partitions]"),
                ("topics, first page of 50", "/topics", "[data-table=topics] tbody tr"),
                ("topics, search 'topic-00'", "/topics?q=topic-00", "[data-table=topics] tbody tr"),
                (f"one topic ({args.partitions} partitions)", f"/topics/{topics[-1]}", "[data-table=partitions] tbody tr"),
                ("groups, first page of 50", "/groups", "[data-table=groups] tbody tr"),
                ("one group", f"/groups/group-{args.groups - 1:04d}", "[data-table=lag] tbody tr"),
                ("brokers", "/brokers", "[data-table=brokers] tbody tr"),
            ]
            print(f"\n| page ({len(topics) * args.partitions:,} partitions, {args.groups:,} groups) "
                  f"| cold: page (API) | warm, median of {WARM_LOADS}: page (API) |")
            print("|---|---:|---:|")
            for name, fragment, ready in pages:
                console.driver.get("about:blank")  # an open page keeps polling, and so the snapshot fresh
                time.sleep(STALE_S + 0.5)
                cold = timed_load(console, fragment, ready)
                warm = [timed_load(console, fragment, ready) for _ in range(WARM_LOADS)]
                page_ms, api_ms = (statistics.median(x[i] for x in warm) * 1000 for i in (0, 1))
                print(f"| {name} | {cold[0] * 1000:.0f} ms ({cold[1] * 1000:.0f} ms) "
                      f"| {page_ms:.0f} ms ({api_ms:.0f} ms) |", flush=True)
            errors = [e for e in console.logs() if e["level"] == "SEVERE"]
            print(f"\nbrowser errors: {errors or 'none'}")
        finally:
            console.driver.quit()
            gateway.stop()
            cluster.stop()


if __name__ == "__main__":
    main()
