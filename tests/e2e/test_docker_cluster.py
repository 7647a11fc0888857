"""The compose cluster as users run it, driven through faults with the docker SDK.

Every test gets a fresh cluster of deploy/docker-compose.yml (three broker containers and
the gateway, named volumes, a private network, ports on 127.0.0.1) and talks to it from
this host with shoal.client, as a user would.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.client import AsyncConsumer, AsyncProducer, RecordMetadata, ShoalError, TopicPartition
from tests.e2e.compose import ComposeCluster, wait_for
from tests.harness import http_json

pytestmark = pytest.mark.e2e

TOPIC = "orders"
PARTITIONS = 12
CONSUMER_APP = Path(__file__).with_name("consumer_app.py")


def make_producer(cluster: ComposeCluster) -> AsyncProducer:
    """Short time-outs, so a broker that does not answer fails its records in seconds."""
    return AsyncProducer(
        cluster.urls, linger_ms=1, request_timeout_ms=1500, delivery_timeout_ms=4000,
        retry_backoff_ms=50, retry_backoff_max_ms=300,
    )


async def send_each(producer: AsyncProducer, partitions, tag: str) -> dict[int, RecordMetadata | BaseException]:
    """One record ``"<partition>-<tag>"`` to each partition; the outcome of each."""
    futures = {p: await producer.send(TOPIC, f"{p}-{tag}", partition=p) for p in partitions}
    outcomes = await asyncio.gather(*futures.values(), return_exceptions=True)
    return dict(zip(futures, outcomes))


async def read_partitions(cluster: ComposeCluster, expected: dict[int, list[str]], timeout: float = 30) -> None:
    """Read the partitions of ``expected`` from offset 0 and check they hold exactly those values."""
    got: dict[int, list[str]] = {p: [] for p in expected}
    async with AsyncConsumer(bootstrap=cluster.urls, request_timeout_ms=2000, fetch_max_wait_ms=200) as consumer:
        consumer.assign([TopicPartition(TOPIC, p) for p in expected])
        try:
            async with asyncio.timeout(timeout):
                while any(len(got[p]) < len(values) for p, values in expected.items()):
                    for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                        got[tp.partition] += [r.value.decode() for r in records]
        except TimeoutError:
            pass  # the comparison below shows what is missing
    assert got == expected


def split_by_owner(cluster: ComposeCluster, victim: int) -> tuple[list[int], list[int]]:
    """Partitions of TOPIC owned by ``victim``, and the others (both must exist for the test to mean anything)."""
    owners = cluster.owners(TOPIC)
    down = [p for p, owner in enumerate(owners) if owner == victim]
    up = [p for p, owner in enumerate(owners) if owner != victim]
    assert down and up, f"owners {owners}: broker {victim} must own some partitions of {TOPIC}, not all"
    return down, up


def shoal_cli(cluster: ComposeCluster, *args: str) -> subprocess.CompletedProcess:
    """The admin CLI of this host's venv against the cluster's cluster.yaml."""
    shoal = Path(sys.executable).with_name("shoal")
    return subprocess.run([str(shoal), "--config", str(cluster.config_path), *args],
                          capture_output=True, text=True, timeout=60)


async def test_produce_and_consume_across_all_brokers(make_cluster):
    cluster = make_cluster({TOPIC: PARTITIONS})
    owners = cluster.owners(TOPIC)
    assert set(owners) == {1, 2, 3}

    async with asyncio.timeout(60):
        async with make_producer(cluster) as producer:
            futures = [await producer.send(TOPIC, f"order-{i}", key=f"user-{i % 40}") for i in range(600)]
            metas = await asyncio.gather(*futures)
        assert {owners[m.partition] for m in metas} == {1, 2, 3}

        by_key: dict[str, list[str]] = {}
        async with AsyncConsumer(TOPIC, bootstrap=str(cluster.config_path), group="billing") as consumer:
            while sum(map(len, by_key.values())) < 600:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    for r in records:
                        by_key.setdefault(r.key.decode(), []).append(r.value.decode())
            await consumer.commit()
            for p in range(PARTITIONS):
                hwm = sum(1 for m in metas if m.partition == p)
                assert (await consumer.committed(TopicPartition(TOPIC, p))).offset == hwm
    assert sum(map(len, by_key.values())) == 600
    for key, values in by_key.items():  # per key, in the order sent
        assert values == [f"order-{i}" for i in range(600) if f"user-{i % 40}" == key]

    # The gateway serves every partition to clients that do not route themselves.
    for p in range(PARTITIONS):
        status, body = http_json("GET", f"{cluster.gateway_url}/v1/topics/{TOPIC}/partitions/{p}/records?offset=0",
                                 headers={"Accept": "application/json"})
        assert status == 200, body
        assert [r["value"] for r in body["records"]] == [f"order-{i}" for i in range(600) if metas[i].partition == p]

    # The image's HEALTHCHECK agrees, and the admin CLI on this host sees every broker.
    services = ["broker-1", "broker-2", "broker-3", "gateway"]
    wait_for(lambda: all(cluster.health(s) == "healthy" for s in services), "docker health of every service", 30)
    ps = cluster.ps()
    print(ps)
    assert ps.count("(healthy)") == 4, ps
    info = shoal_cli(cluster, "--output", "json", "cluster", "info")
    assert info.returncode == 0, info.stderr
    assert sorted(b["id"] for b in json.loads(info.stdout)["brokers"]) == [1, 2, 3]


async def test_topic_created_on_the_host_outlives_a_container_restart(make_cluster):
    """`shoal topic create` replaces cluster.yaml; a broker restarted afterwards must read the new file."""
    cluster = make_cluster({TOPIC: 3})
    created = shoal_cli(cluster, "topic", "create", "payments", "-p", "6")
    assert created.returncode == 0, created.stderr

    container = cluster.broker(1)
    await asyncio.to_thread(container.restart, timeout=5)
    await asyncio.to_thread(cluster.wait_serving, 1)
    status, topology = http_json("GET", cluster.url(1) + "/v1/cluster")
    assert status == 200
    assert topology["epoch"] == 2 and topology["topics"]["payments"]["partitions"] == 6

    async with asyncio.timeout(60), make_producer(cluster) as producer:
        futures = [await producer.send("payments", f"p{p}", partition=p) for p in range(6)]
        assert [m.offset for m in await asyncio.gather(*futures)] == [0] * 6


async def test_killed_broker_takes_down_only_its_partitions_and_returns_with_every_acked_record(make_cluster):
    cluster = make_cluster({TOPIC: PARTITIONS})
    victim = 2
    down, up = split_by_owner(cluster, victim)
    acked: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}

    async with asyncio.timeout(120):
        async with make_producer(cluster) as producer:
            for i in range(20):
                for p, outcome in (await send_each(producer, range(PARTITIONS), f"before-{i}")).items():
                    assert isinstance(outcome, RecordMetadata), outcome
                    acked[p].append(f"{p}-before-{i}")

            await asyncio.to_thread(cluster.broker(victim).kill)
            outcomes = await send_each(producer, range(PARTITIONS), "while-down")
        for p in down:
            assert isinstance(outcomes[p], ShoalError), outcomes[p]
            assert TOPIC in str(outcomes[p])
        for p in up:
            assert isinstance(outcomes[p], RecordMetadata), outcomes[p]
            acked[p].append(f"{p}-while-down")
        await read_partitions(cluster, {p: acked[p] for p in up})

        container = cluster.broker(victim)
        await asyncio.to_thread(container.start)
        await asyncio.to_thread(cluster.wait_serving, victim)
        await read_partitions(cluster, acked)

        async with make_producer(cluster) as producer:
            for p, outcome in (await send_each(producer, down, "after")).items():
                assert isinstance(outcome, RecordMetadata), outcome
                assert outcome.offset == len(acked[p])


@pytest.mark.parametrize("fault", ["pause", "disconnect"])
async def test_unresponsive_broker_is_survived(make_cluster, fault):
    """A frozen broker (packets go unanswered) or one cut off its network (connections refused)."""
    cluster = make_cluster({TOPIC: PARTITIONS})
    victim = 3
    down, up = split_by_owner(cluster, victim)
    container, network = cluster.broker(victim), cluster.network()
    inject, heal = {
        "pause": (container.pause, container.unpause),
        "disconnect": (lambda: network.disconnect(container), lambda: network.connect(container)),
    }[fault]
    expected: dict[int, list[str]] = {p: [f"{p}-before"] for p in range(PARTITIONS)}

    async with asyncio.timeout(120):
        async with make_producer(cluster) as producer:
            assert all(isinstance(o, RecordMetadata) for o in (await send_each(producer, range(PARTITIONS), "before")).values())
            await asyncio.to_thread(inject)
            try:
                outcomes = await send_each(producer, range(PARTITIONS), "during")
                for p in down:
                    assert isinstance(outcomes[p], ShoalError) and outcomes[p].retriable, outcomes[p]
                for p in up:
                    assert isinstance(outcomes[p], RecordMetadata), outcomes[p]
                    expected[p].append(f"{p}-during")
                await read_partitions(cluster, {p: expected[p] for p in up})

                async with AsyncConsumer(bootstrap=cluster.urls, group="audit", request_timeout_ms=1500) as consumer:
                    with pytest.raises(ShoalError) as failed:
                        await consumer.commit({TopicPartition(TOPIC, down[0]): 1})
                    assert failed.value.retriable
            finally:
                await asyncio.to_thread(heal)
            await asyncio.to_thread(cluster.wait_serving, victim)

            outcomes = await send_each(producer, down, "after")
            assert all(isinstance(o, RecordMetadata) for o in outcomes.values()), outcomes

    # A request that reached the frozen broker may still have been written when it woke up,
    # as with any broker that answers too late: "during" may be there, and nothing else.
    async with AsyncConsumer(bootstrap=cluster.urls, request_timeout_ms=2000) as consumer:
        consumer.assign([TopicPartition(TOPIC, p) for p in down])
        got: dict[int, list[str]] = {p: [] for p in down}
        async with asyncio.timeout(30):
            while any(not values or values[-1] != f"{p}-after" for p, values in got.items()):
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    got[tp.partition] += [r.value.decode() for r in records]
    for p in down:
        assert got[p] in ([f"{p}-before", f"{p}-after"], [f"{p}-before", f"{p}-during", f"{p}-after"]), got[p]


def committed_offsets(cluster: ComposeCluster, group: str, partitions: int) -> dict[int, tuple[int | None, int]]:
    """partition -> (the group's committed offset, high watermark), asked of each owner."""
    owners = cluster.owners(TOPIC)
    out = {}
    for p in range(partitions):
        status, body = http_json("GET", f"{cluster.url(owners[p])}/v1/groups/{group}/topics/{TOPIC}/partitions/{p}/offset")
        assert status == 200, body
        out[p] = (body["offset"], body["high_watermark"])
    return out


def consumed(container) -> list[dict]:
    lines = container.logs(stdout=True, stderr=False).decode().splitlines()
    return [row for row in map(json.loads, lines) if "offset" in row]


async def test_consumer_container_resumes_from_committed_offsets(make_cluster):
    partitions, group = 6, "billing"
    cluster = make_cluster({TOPIC: partitions})

    def start_consumer(name: str):
        return cluster.run(
            name,
            entrypoint=["python", "/opt/e2e/consumer_app.py"],
            command=["--bootstrap", ",".join(cluster.urls), "--topic", TOPIC, "--group", group],
            network_mode="host",  # reaches the brokers where they advertise themselves: 127.0.0.1
            volumes={str(CONSUMER_APP): {"bind": "/opt/e2e/consumer_app.py", "mode": "ro"}},
        )

    def all_committed() -> dict[int, tuple[int | None, int]]:
        offsets = committed_offsets(cluster, group, partitions)
        return offsets if all(c == hw for c, hw in offsets.values()) else {}

    async def produce(tag: str, n: int) -> list[str]:
        async with make_producer(cluster) as producer:
            values = [f"{tag}-{i}" for i in range(n)]
            await asyncio.gather(*[await producer.send(TOPIC, v, key=v) for v in values])
        return values

    first = await produce("first", 300)
    c1 = start_consumer("consumer-1")
    wait_for(lambda: sum(hw for _, hw in all_committed().values()) == 300, "consumer-1 committed everything", 60)
    c1.kill()
    c1.wait(timeout=30)
    assert sorted(r["value"] for r in consumed(c1)) == sorted(first)
    before = all_committed()

    second = await produce("second", 200)
    c2 = start_consumer("consumer-2")
    wait_for(lambda: sum(hw for _, hw in all_committed().values()) == 500, "consumer-2 committed everything", 60)
    rows = consumed(c2)
    assert sorted(r["value"] for r in rows) == sorted(second)  # nothing read twice, nothing skipped
    for p in range(partitions):
        offsets = [r["offset"] for r in rows if r["partition"] == p]
        assert offsets == list(range(before[p][0], before[p][0] + len(offsets)))
