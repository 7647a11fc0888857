"""Auto-commit keeps at-least-once: a consumer process that dies (kill -9) or is closed in
the middle of a batch never commits a record it was handed and did not process.

The consumer runs as a real process (this module, run with ``python -m``): it reads
batches of 5, writes each record's offset to a file once processed, and in its second
batch stops after 2 records, then either closes or waits to be killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal.client import AsyncConsumer, AsyncProducer, TopicPartition

TOPICS = {"ac-close": 1, "ac-kill": 1}
RECORDS = 20
COMMIT_MS = 3000  # the first auto-commit comes long after the child reached the middle of its second batch


async def _child(urls: list[str], topic: str, out: Path, ending: str) -> None:
    consumer = AsyncConsumer(bootstrap=urls, group=topic, enable_auto_commit=True, auto_commit_interval_ms=COMMIT_MS)
    consumer.assign([TopicPartition(topic, 0)])
    with out.open("a", buffering=1) as processed:
        async with consumer:
            for batch_no in range(2):
                batch = await consumer.getmany(timeout_ms=10_000, max_records=5)
                records = [r for rs in batch.values() for r in rs]
                for i, record in enumerate(records):
                    if batch_no == 1 and i == 2:  # the middle of the second batch
                        processed.write("MIDDLE\n")
                        if ending == "close":
                            await consumer.close()
                            return
                        await asyncio.Event().wait()  # until kill -9
                    processed.write(f"{record.offset}\n")


def _processed(out: Path) -> list[int]:
    return [int(line) for line in out.read_text().split() if line.isdigit()]


def _wait_for(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout:.0f}s")
        time.sleep(0.02)


async def _rest(urls: list[str], topic: str) -> list[int]:
    """What a new consumer of the group reads, from the group's committed offset on."""
    async with AsyncConsumer(topic, bootstrap=urls, group=topic) as consumer:
        got: list[int] = []
        async with asyncio.timeout(20):
            while not got or got[-1] < RECORDS - 1:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    got.extend(r.offset for r in records)
        return got


@pytest.mark.parametrize("ending", ["close", "kill"])
async def test_a_consumer_stopped_mid_batch_loses_no_record(cluster, tmp_path, ending):
    topic = f"ac-{ending}"
    async with AsyncProducer(cluster.urls) as producer:
        for i in range(RECORDS):
            await producer.send(topic, b"%d" % i, partition=0)
    out = tmp_path / "processed"
    out.touch()
    log = tmp_path / "child.log"
    with log.open("wb") as log_file:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_client_autocommit", ",".join(cluster.urls), topic, str(out),
             ending],
            cwd=Path(__file__).parents[2], stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        if ending == "close":
            assert child.wait(30) == 0, log.read_text()
        else:
            _wait_for(lambda: "MIDDLE" in out.read_text(), "MIDDLE mark")
            async with AsyncConsumer(bootstrap=cluster.urls, group=topic) as probe:
                tp = TopicPartition(topic, 0)

                async def committed() -> None:
                    while await probe.committed(tp) is None:
                        await asyncio.sleep(0.05)

                await asyncio.wait_for(committed(), 30)  # the timer's first commit, made mid-batch
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    processed = _processed(out)
    assert processed == [0, 1, 2, 3, 4, 5, 6]
    rest = await _rest(cluster.urls, topic)
    assert rest[0] == 5  # the second batch comes again: 7, 8, 9 were handed out but not processed
    assert set(processed) | set(rest) == set(range(RECORDS))


if __name__ == "__main__":
    urls, topic, out, ending = sys.argv[1:]
    asyncio.run(_child(urls.split(","), topic, Path(out), ending))
