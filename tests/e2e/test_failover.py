"""Leader failover in the compose cluster, driven with the docker SDK.

While an idempotent producer writes with acks=all, the container of the partition's
leader is killed (or, in the soak variant, also paused past its lease): GET /v1/cluster
names a new leader at a higher leader epoch without the old one in the ISR; started
again, the old leader's container rejoins the ISR. Every acknowledged record is read back
exactly once at its acknowledged offset, and the three brokers' segment files (read out
of the containers) hold the same frames below the high watermark.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
import time

import pytest

from shoal.client import AsyncProducer, RecordMetadata, TopicPartition
from shoal.client.records import iter_frames
from tests.client.helpers import read_exactly
from tests.e2e.compose import BROKER_IDS, ComposeCluster, wait_for
from tests.harness import env_flag, http_json

pytestmark = pytest.mark.e2e

TOPIC = "failover"  # one partition, replicated on all three brokers (tests/e2e/conftest.py)
SOAK = [pytest.mark.soak, pytest.mark.skipif(not env_flag("SHOAL_SOAK"), reason="SHOAL_SOAK=1 runs it")]
# How each fault is done to a container, and undone.
FAULTS = {
    "kill": (lambda c: c.kill(), lambda c: c.start()),  # SIGKILL, as `docker compose kill`
    "pause": (lambda c: c.pause(), lambda c: c.unpause()),  # frozen past its lease: a zombie leader
}


def state(cluster: ComposeCluster, via: int | None = None) -> dict | None:
    try:
        return cluster.partition(TOPIC, 0, via)
    except (RuntimeError, KeyError, IndexError):
        return None


class Writer:
    """Sends a steady stream of records to partition 0 and keeps what was acknowledged."""

    def __init__(self, producer: AsyncProducer):
        self.producer = producer
        self.sent: list[tuple[bytes, asyncio.Future]] = []
        self.probes: list[tuple[int, bytes]] = []  # (offset, value) of records sent one by one
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        while not self.stopped.is_set():
            value = b"r%06d" % len(self.sent)
            self.sent.append((value, await self.producer.send(TOPIC, value, partition=0)))
            await asyncio.sleep(0.005)

    def acked(self) -> int:
        return sum(1 for _, f in self.sent if f.done() and not f.exception())

    async def wait_acked(self, count: int, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout):
            while self.acked() < count:
                await asyncio.sleep(0.05)

    async def results(self) -> list[tuple[int, bytes]]:
        outcomes = await asyncio.gather(*(f for _, f in self.sent), return_exceptions=True)
        failed = [(v, o) for (v, _), o in zip(self.sent, outcomes) if not isinstance(o, RecordMetadata)]
        assert not failed, f"{len(failed)} records not acknowledged, first: {failed[:3]}"
        return [(o.offset, v) for (v, _), o in zip(self.sent, outcomes)] + self.probes

    async def probe(self) -> None:
        """One record sent and waited for on its own."""
        value = b"probe-%d" % len(self.probes)
        self.probes.append(((await (await self.producer.send(TOPIC, value, partition=0))).offset, value))


async def fail_over(cluster: ComposeCluster, writer: Writer, fault: str) -> dict[str, float]:
    """One round: fault the leader's container mid-stream, see a new leader elected and
    acknowledging, undo the fault, see the old leader back in the ISR. Returns timings."""
    inject, heal = FAULTS[fault]
    before = await asyncio.to_thread(wait_for, lambda: (s := state(cluster)) and len(s["isr"]) == 3 and s,
                                     "the partition fully in sync", 90)
    old = before["leader"]
    survivor = next(b for b in BROKER_IDS if b != old)
    container = cluster.broker(old)
    await writer.wait_acked(writer.acked() + 100)

    faulted_at = time.monotonic()
    await asyncio.to_thread(inject, container)

    def elected():
        s = state(cluster, survivor)
        return s if s and s["leader"] not in (old, -1) and s["leader_epoch"] > before["leader_epoch"] else None

    after = await asyncio.to_thread(wait_for, elected, f"a new leader after {fault} of broker {old}", 60, 0.02)
    elected_s = time.monotonic() - faulted_at
    assert old not in after["isr"], after
    await writer.probe()
    first_ack_s = time.monotonic() - faulted_at
    await writer.wait_acked(writer.acked() + 100)

    await asyncio.to_thread(heal, container)
    healed_at = time.monotonic()
    await asyncio.to_thread(wait_for, lambda: (s := state(cluster, survivor)) and old in s["isr"],
                            f"broker {old} back in the ISR", 90, 0.1)
    return {"elected": elected_s, "first_ack": first_ack_s, "rejoined": time.monotonic() - healed_at}


def stored_frames(cluster: ComposeCluster, broker_id: int) -> list[bytes]:
    """The frames of failover/0 in the segment files inside broker ``broker_id``'s container."""
    chunks, _ = cluster.broker(broker_id).get_archive(f"/var/lib/shoal/{TOPIC}-0")
    data = b""
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        for member in sorted((m for m in tar.getmembers() if m.name.endswith(".log")), key=lambda m: m.name):
            data += tar.extractfile(member).read()
    return [bytes(frame) for _, frame in iter_frames(data)]


async def check_every_acknowledged_record_once(cluster: ComposeCluster, acked: list[tuple[int, bytes]]) -> None:
    leader = state(cluster)["leader"]
    _, offsets = http_json("GET", f"{cluster.url(leader)}/v1/topics/{TOPIC}/partitions/0/offsets")
    hw = offsets["high_watermark"]
    records = await read_exactly(cluster.urls, [TopicPartition(TOPIC, 0)], hw, timeout=60)
    at = {r.offset: r.value for r in records}
    for offset, value in acked:
        assert at.get(offset) == value, f"acknowledged {value!r} at {offset}, found {at.get(offset)!r}"
    values = [r.value for r in records]
    assert len(values) == len(set(values)), "a record is stored twice"

    def below_hw(broker_id: int) -> list[bytes]:
        return [f for f in stored_frames(cluster, broker_id) if int.from_bytes(f[:8], "big") < hw]

    reference = await asyncio.to_thread(below_hw, leader)
    for broker_id in BROKER_IDS:  # followers have copied up to the high watermark within moments
        await asyncio.to_thread(wait_for, lambda: below_hw(broker_id) == reference,
                                f"broker {broker_id}'s frames equal the leader's below {hw}", 30, 0.5)


@pytest.mark.parametrize("fault, rounds", [
    ("kill", 1),
    pytest.param("kill", 5, marks=SOAK, id="kill-loop"),
    pytest.param("pause", 3, marks=SOAK, id="pause-loop"),
])  # fmt: skip
async def test_leader_container_fault_loses_no_acknowledged_record(cluster, fault, rounds, capsys):
    timings = []
    async with AsyncProducer(cluster.urls, acks="all", idempotent=True, request_timeout_ms=3000,
                             retry_backoff_ms=50, retry_backoff_max_ms=300) as producer:
        writer = Writer(producer)
        task = asyncio.create_task(writer.run())
        try:
            async with asyncio.timeout(180 * rounds):
                for _ in range(rounds):
                    timings.append(await fail_over(cluster, writer, fault))
        finally:
            writer.stopped.set()
            await task
        acked = await writer.results()
    await check_every_acknowledged_record_once(cluster, acked)
    with capsys.disabled():
        print(f"\ne2e {fault} x{rounds}: {len(acked)} acknowledged, 0 lost, 0 duplicated")
        for t in timings:
            print(f"  new leader after {t['elected']:.2f} s, first acks=all acknowledgement after "
                  f"{t['first_ack']:.2f} s; back in the ISR {t['rejoined']:.2f} s after the {fault} was undone")
