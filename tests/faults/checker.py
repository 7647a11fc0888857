"""The fault tests' view of a replicated cluster and their common check.

A ``History`` collects what the clients saw while faults were injected: every
acknowledged record (its offset and value), every record a consumer read, every
committed offset read back. ``check_history`` then asserts, after healing, what a
Jepsen-style analysis of a Kafka-like log asks:

- every acknowledged record is stored exactly once, at its acknowledged offset;
- no consumer saw two different records at one offset;
- the group's committed offset never went back;
- every replica holds the same frames, byte for byte, below the high watermark.

``Workload`` runs the clients (an idempotent ``acks=all`` producer and a consumer
that commits) in the background of a test: ``async with Workload(urls) as work: ...
history = await work.stop()``.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from shoal.client import AsyncConsumer, AsyncProducer
from shoal.client.errors import ShoalError
from shoal.client.records import iter_frames
from shoal.client.structs import TopicPartition
from tests.faults.partition_http import read_records
from tests.harness import http_json
from tests.metadata.helpers import poll

TOPIC = "orders"
BROKERS = (1, 2, 3)
REQUEST_TIMEOUT_MS = 5000  # a request into a blackholed link gives up and asks the cluster again


def state_of(url: str, partition: int = 0, topic: str = TOPIC) -> dict | None:
    """The partition's state in a broker's GET /v1/cluster, or None (unknown, or unreachable)."""
    try:
        status, body = http_json("GET", url + "/v1/cluster", timeout=2)
    except OSError:
        return None
    states = body.get("partitions", {}).get(topic) if status == 200 else None
    return states[partition] if states else None


def produce(url: str, value: str, partition: int = 0, topic: str = TOPIC, **params):
    """One record by HTTP straight to ``url`` (no client routing): (status, ack or problem)."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    target = f"{url}/v1/topics/{topic}/partitions/{partition}/records" + (f"?{query}" if query else "")
    return http_json("POST", target, {"records": [{"value": value}]})


def leader_ready(url: str, partition: int = 0, topic: str = TOPIC) -> bool:
    """Whether the broker at ``url`` answers for the partition as its leader."""
    try:
        return http_json("GET", f"{url}/v1/topics/{topic}/partitions/{partition}/offsets", timeout=2)[0] == 200
    except OSError:
        return False


def high_watermark(url: str, partition: int = 0, topic: str = TOPIC) -> int:
    _, body = http_json("GET", f"{url}/v1/topics/{topic}/partitions/{partition}/offsets")
    return body["high_watermark"]


def stored_frames(cluster, broker: int, partition: int = 0, topic: str = TOPIC) -> list[bytes]:
    """The frames of a partition in broker ``broker``'s segment files, in offset order."""
    d = Path(cluster.config["brokers"][broker - 1]["data_dir"]) / f"{topic}-{partition}"
    data = b"".join(p.read_bytes() for p in sorted(d.glob("*.log")))
    return [bytes(frame) for _, frame in iter_frames(data)]


async def in_sync(cluster, via: int = 1, partition: int = 0, topic: str = TOPIC) -> dict:
    """The partition's state once every replica is in its ISR and the leader answers (a
    leader in etcd may still be taking up its epoch: 503 until it has)."""

    def full():
        s = state_of(cluster.url(via), partition, topic)
        if not (s and s["leader"] >= 0 and sorted(s["isr"]) == sorted(s["replicas"])):
            return None
        return s if leader_ready(cluster.url(s["leader"]), partition, topic) else None

    return await poll(lambda: asyncio.to_thread(full), timeout=30)


async def leader_answering(cluster, partition: int = 0, topic: str = TOPIC) -> dict | None:
    """The partition's state once its leader answers produces (it has seen every broker live)."""
    state = await poll(lambda: asyncio.to_thread(state_of, cluster.urls[0], partition, topic), timeout=20)
    status, _ = await asyncio.to_thread(produce, cluster.url(state["leader"]), "probe", partition, topic)
    return state if status == 200 else None


class CommittedOffsetWentBack(AssertionError):
    """A group's committed offset, read back, was lower than one read before."""


@dataclass
class History:
    """What the clients saw, for ``check_history``."""

    sent: set[bytes] = field(default_factory=set)  # every value sent (each once)
    acked: list[tuple[int, bytes]] = field(default_factory=list)  # (offset, value) acknowledged
    seen: dict[int, bytes] = field(default_factory=dict)  # offset -> the value a consumer read there
    conflicts: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (offset, first, then)
    committed: list[int] = field(default_factory=list)  # committed offsets as read back, in order

    def saw(self, offset: int, value: bytes) -> None:
        before = self.seen.setdefault(offset, value)
        if before != value:
            self.conflicts.append((offset, before, value))


def check_committed(history: History) -> None:
    if history.committed != sorted(history.committed):
        raise CommittedOffsetWentBack(f"a committed offset went back: {history.committed}")


async def check_history(cluster, history: History, *, leader: int | None = None, partition: int = 0,
                        topic: str = TOPIC, brokers=BROKERS, committed: bool = True) -> list[tuple[int, bytes]]:  # fmt: skip
    """Assert the properties of the module doc (``committed=False``: all but the committed
    offsets, for a caller that checks more first); return the log as (offset, value) pairs."""
    if leader is None:
        leader = (await in_sync(cluster, brokers[0], partition, topic))["leader"]
    url = f"{cluster.url(leader)}/v1/topics/{topic}/partitions/{partition}"
    records = await asyncio.to_thread(read_records, url, 0)
    at = {r.offset: r.value for r in records}
    for offset, value in history.acked:
        assert at.get(offset) == value, f"acknowledged {value!r} at {offset}, found {at.get(offset)!r}"
    values = [r.value for r in records if r.value in history.sent]
    assert len(values) == len(set(values)), "a record is stored twice"
    assert not history.conflicts, f"a consumer saw two records at one offset: {history.conflicts[:5]}"
    for offset, value in history.seen.items():
        assert at.get(offset) == value, f"a consumer read {value!r} at {offset}, the log holds {at.get(offset)!r}"
    hw = high_watermark(cluster.url(leader), partition, topic)

    def below_hw(broker):
        return [f for f in stored_frames(cluster, broker, partition, topic) if int.from_bytes(f[:8], "big") < hw]

    reference = below_hw(leader)
    assert sum(int.from_bytes(f[22:26], "big") for f in reference) == hw - (records[0].offset if records else 0)
    for broker in brokers:  # followers copy up to the high watermark within moments
        await poll(lambda: asyncio.to_thread(lambda: below_hw(broker) == reference), timeout=30)
    if committed:
        check_committed(history)
    return [(r.offset, r.value) for r in records]


class Workload:
    """An idempotent ``acks=all`` producer and a committing consumer of one partition,
    running until ``stop()``; what they saw goes to ``history``.

    ``bootstrap`` lists the brokers the clients ask for the cluster first (in a test
    with proxied peer urls, the brokers whose own view has none).
    """

    def __init__(self, bootstrap: list[str], *, partition: int = 0, topic: str = TOPIC, interval_s: float = 0.005):
        self.bootstrap = bootstrap
        self.tp = TopicPartition(topic, partition)
        self.interval_s = interval_s
        self.history = History()
        self.sent = 0
        self.failed = 0  # sends that were never acknowledged
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def __aenter__(self) -> Workload:
        self._tasks = [asyncio.create_task(self._produce()), asyncio.create_task(self._consume())]
        return self

    async def __aexit__(self, *exc) -> None:
        """Cancel what still runs (a test that failed before ``stop()``)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def acked_count(self, at_least: int, timeout: float = 30) -> None:
        """Wait until ``at_least`` more records are acknowledged than now."""
        target = len(self.history.acked) + at_least
        await poll(lambda: asyncio.sleep(0, len(self.history.acked) >= target), timeout=timeout)

    async def stop(self) -> History:
        """Stop producing, wait for every send's outcome, let the consumer read up to the end."""
        self._stopping.set()
        await self._tasks[0]
        end = max((o for o, _ in self.history.acked), default=-1)
        await poll(lambda: asyncio.sleep(0, max(self.history.seen, default=-1) >= end), timeout=60)
        self._tasks[1].cancel()
        await asyncio.gather(self._tasks[1], return_exceptions=True)
        return self.history

    async def _produce(self) -> None:
        producer = AsyncProducer(
            self.bootstrap, acks="all", retry_backoff_ms=50, retry_backoff_max_ms=200, request_timeout_ms=REQUEST_TIMEOUT_MS
        )
        try:
            pending = []
            while not self._stopping.is_set():
                value = b"r%06d" % self.sent
                self.sent += 1
                self.history.sent.add(value)
                pending.append((value, await producer.send(self.tp.topic, value, partition=self.tp.partition)))
                for done in [p for p in pending if p[1].done()]:
                    self._settle(*done)
                pending = [p for p in pending if not p[1].done()]
                await asyncio.sleep(self.interval_s)
            await asyncio.gather(*(fut for _, fut in pending), return_exceptions=True)
            for value, fut in pending:
                self._settle(value, fut)
        finally:
            await producer.close(timeout=1)

    def _settle(self, value: bytes, fut: asyncio.Future) -> None:
        if fut.exception() is None:
            self.history.acked.append((fut.result().offset, value))
        else:
            self.failed += 1

    async def _consume(self) -> None:
        group = f"check-{uuid.uuid4().hex[:8]}"
        position = 0
        while True:
            consumer = AsyncConsumer(
                bootstrap=self.bootstrap, group=group, fetch_max_wait_ms=100, request_timeout_ms=REQUEST_TIMEOUT_MS
            )
            consumer.assign([self.tp])
            try:
                await consumer.seek(self.tp, position)
                while True:
                    batches = await consumer.getmany(timeout_ms=500)
                    for record in batches.get(self.tp, []):
                        self.history.saw(record.offset, record.value)
                        position = record.offset + 1
                    if batches:
                        await self._commit(consumer, position)
            except Exception:  # a fault the client gave up on: start again where it was
                await asyncio.sleep(0.2)
            finally:
                await consumer.close()

    async def _commit(self, consumer: AsyncConsumer, position: int) -> None:
        try:
            await consumer.commit({self.tp: position})
            committed = await consumer.committed(self.tp)
        except ShoalError:
            return  # the group's coordinator is out of reach: the next batch commits again
        if committed is not None:
            self.history.committed.append(committed.offset)
