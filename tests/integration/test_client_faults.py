"""The client under failure: brokers killed with SIGKILL, consumers killed mid-stream, timeouts."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from shoal.client import AsyncConsumer, AsyncProducer, TopicPartition
from shoal.client.errors import BufferFullError, ProducerClosedError, ShoalTimeoutError
from tests.client.helpers import all_partitions, read_exactly


async def test_broker_killed_and_restarted_mid_produce_loses_and_duplicates_nothing(cluster_factory, caplog):
    """SIGKILL a broker while batches are in flight, restart it: every record acked, stored once."""
    caplog.set_level(logging.WARNING, logger="shoal.client")
    cluster = cluster_factory(3, {"t": 12})
    n = 30_000
    victim = 2
    victim_partitions = [p for p in range(12) if cluster.owner("t", p) == victim]
    assert victim_partitions  # rendezvous hashing gives each of 3 brokers some of 12
    third_sent = asyncio.Event()

    async with AsyncProducer(cluster.urls, linger_ms=2, max_batch_bytes=16 << 10, retry_backoff_ms=50) as producer:

        async def produce():
            futures = []
            for i in range(n):
                futures.append(await producer.send("t", b"%d" % i, key=b"%d" % i))
                if i % 200 == 0:
                    await asyncio.sleep(0.002)  # pace the load so the kill lands mid-stream
                if i == n // 3:
                    third_sent.set()
            return futures

        producing = asyncio.create_task(produce())
        await third_sent.wait()
        await asyncio.to_thread(cluster.kill, victim)
        await asyncio.to_thread(cluster.restart, victim)
        futures = await producing
        await producer.flush()
        metas = await asyncio.gather(*futures)  # raises if any record failed for good

    assert any("retrying batch" in r.getMessage() for r in caplog.records)  # the kill was felt
    records = await read_exactly(cluster.urls, all_partitions("t", 12), n, timeout=60)
    values = [int(r.value) for r in records]
    assert len(values) == n and sorted(values) == list(range(n))  # no loss, no duplicate
    where = {(r.partition, r.offset): int(r.value) for r in records}
    assert all(where[(m.partition, m.offset)] == i for i, m in enumerate(metas))


async def test_delivery_timeout_fails_the_batch_and_takes_a_new_producer_id(cluster_factory):
    """With the owner down past delivery_timeout_ms the records fail; the next ones use a new id."""
    cluster = cluster_factory(2, {"t": 4})
    p = next(p for p in range(4) if cluster.owner("t", p) == 2)
    async with AsyncProducer(cluster.urls, delivery_timeout_ms=1500, retry_backoff_ms=20) as producer:
        await producer.send_and_wait("t", b"before", partition=p)
        first_id = producer.producer_id
        cluster.kill(2)
        doomed = await producer.send("t", b"lost", partition=p)
        with pytest.raises(ShoalTimeoutError, match="delivery_timeout_ms=1500"):
            await doomed
        assert producer.producer_id != first_id  # no sequence gap under the old id
        await asyncio.to_thread(cluster.restart, 2)
        meta = await producer.send_and_wait("t", b"after", partition=p)
    records = await read_exactly(cluster.urls, [TopicPartition("t", p)], 2)
    assert [r.value for r in sorted(records, key=lambda r: r.offset)] == [b"before", b"after"]
    assert meta.offset == records[-1].offset


async def test_send_blocks_then_raises_when_the_buffer_stays_full(cluster_factory):
    cluster = cluster_factory(1, {"t": 1})
    async with AsyncProducer(cluster.urls, buffer_memory=4096, max_block_ms=300, delivery_timeout_ms=60_000) as producer:
        cluster.kill(1)
        with pytest.raises(BufferFullError, match="max_block_ms=300"):
            for _ in range(100):
                await producer.send("t", b"x" * 100)
        await producer.close(timeout=0.5)


async def test_every_pending_future_fails_when_the_sender_dies(cluster_factory):
    cluster = cluster_factory(1, {"t": 1})
    producer = AsyncProducer(cluster.urls, linger_ms=60_000)
    futures = [await producer.send("t", b"x") for _ in range(10)]
    producer._sender.task.cancel()  # what any unexpected crash of the sender task amounts to
    await asyncio.gather(producer._sender.task, return_exceptions=True)
    for future in futures:
        with pytest.raises(ProducerClosedError, match="sender task"):
            await future
    with pytest.raises(ProducerClosedError):
        await producer.send("t", b"more")
    await producer.close()


async def test_consumer_survives_a_broker_restart_without_rereading(cluster_factory):
    """Positions live in the consumer: after the owner comes back, it reads on from where it was."""
    cluster = cluster_factory(1, {"t": 1})
    tp = TopicPartition("t", 0)
    async with AsyncProducer(cluster.urls) as producer, AsyncConsumer(
        bootstrap=cluster.urls, fetch_max_wait_ms=200, retry_backoff_ms=20
    ) as consumer:
        consumer.assign([tp])
        for i in range(5):
            await producer.send_and_wait("t", b"%d" % i)
        got = []
        while len(got) < 5:
            got += (await consumer.getmany(timeout_ms=1000)).get(tp, [])
        await asyncio.to_thread(cluster.restart, 1)
        for i in range(5, 8):
            await producer.send_and_wait("t", b"%d" % i)
        while len(got) < 8:
            got += (await consumer.getmany(timeout_ms=1000)).get(tp, [])
        assert [int(r.value) for r in got] == list(range(8))
        assert await consumer.position(tp) == 8


CONSUMER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from shoal.client import AsyncConsumer

    async def main(bootstrap, stop_after):
        async with AsyncConsumer("t", bootstrap=bootstrap, group="workers", fetch_max_wait_ms=100) as consumer:
            positions = {f"{tp.topic}/{tp.partition}": await consumer.position(tp) for tp in consumer.assignment()}
            print(json.dumps({"start": positions}), flush=True)
            seen = 0
            async for record in consumer:
                print(json.dumps({"p": record.partition, "o": record.offset}), flush=True)
                seen += 1
                if seen == stop_after:
                    await consumer.commit()
                    print(json.dumps({"committed": seen}), flush=True)
                    if len(sys.argv) > 3:
                        return  # otherwise read on until SIGKILL comes

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def _run_worker(script, cluster, env, count: int, *, killed_after_commit: bool) -> list[dict]:
    """A worker process's messages; SIGKILLed right after its commit, or left to exit."""
    args = [sys.executable, str(script), str(cluster.config_path), str(count)]
    if not killed_after_commit:
        args.append("exit-after-commit")
    msgs = []
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            for line in proc.stdout:
                msgs.append(json.loads(line))
                if killed_after_commit and "committed" in msgs[-1]:
                    proc.send_signal(signal.SIGKILL)
                    break
        finally:
            if proc.poll() is None and killed_after_commit:
                proc.send_signal(signal.SIGKILL)
            proc.wait(60)
    if killed_after_commit:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 0
    return msgs


async def test_consumer_process_killed_after_committing_resumes_from_the_commit(cluster_factory, tmp_path):
    """A consumer process commits half and is SIGKILLed; a new process starts exactly at the commit."""
    cluster = cluster_factory(3, {"t": 6})
    n = 600
    async with AsyncProducer(cluster.urls) as producer:
        for i in range(n):
            await producer.send("t", b"%d" % i)
    script = tmp_path / "worker.py"
    script.write_text(CONSUMER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    first = await asyncio.to_thread(_run_worker, script, cluster, env, n // 2, killed_after_commit=True)
    before = [(m["p"], m["o"]) for m in first if "p" in m]
    assert len(before) == n // 2 and first[-1] == {"committed": n // 2}
    committed = {p: 0 for p in range(6)}
    for p, o in before:
        committed[p] = max(committed[p], o + 1)

    second = await asyncio.to_thread(_run_worker, script, cluster, env, n - n // 2, killed_after_commit=False)
    assert second[0]["start"] == {f"t/{p}": committed[p] for p in range(6)}
    after = [(m["p"], m["o"]) for m in second if "p" in m]
    assert len(set(before + after)) == n  # every record read once: nothing twice, nothing skipped
