"""The replicated path: three brokers and an etcd, ``acks=all`` at factor 3 against ``acks=1`` at factor 1.

- ``replicated_run``: on one cluster, a topic of factor 3 (``min_insync_replicas`` 2)
  and one of factor 1: unthrottled throughput of ``send()`` with ``linger_ms=5``, then
  latency at fixed rates (every record timed from when it was due), for each of
  ``acks=all``/factor 3 and ``acks=1``/factor 1; then records acknowledged per
  ``BIN`` seconds across a SIGKILL of the factor-3 partition's leader.
- ``many_partitions_run``: a topic of N partitions at factor 3 on three brokers:
  the time until every partition has a leader and a full ISR, each broker's memory,
  threads and idle CPU, and the time from SIGKILLing one broker until none of its
  leaderships is left (every partition it led has a live leader).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter

from shoal.client.producer import AsyncProducer
from shoal.router.cli import bench_driver as perf

from .cluster import ShoalCluster, poll
from .procs import ServerError

log = logging.getLogger(__name__)

BIN = 0.1  # seconds per point of the failover timeline
MIB = 1024 * 1024
PATHS = {"acks=all, factor 3": ("r3", "all"), "acks=1, factor 1": ("r1", "1")}


def _topics(partitions: int = 1) -> dict[str, dict]:
    return {
        "r3": {"partitions": partitions, "replication_factor": 3, "min_insync_replicas": 2},
        "r1": {"partitions": partitions, "replication_factor": 1},
        "failover": {"partitions": 1, "replication_factor": 3, "min_insync_replicas": 2},
    }


def _run(coro):
    with asyncio.Runner(loop_factory=perf.new_event_loop) as runner:
        return runner.run(coro)


def replicated_run(*, records: int, rates: list[int], seconds: float, failover_rate: int,
                   failover_seconds: tuple[float, float], step_timeout: float = 300) -> dict:  # fmt: skip
    """Throughput and latency of both paths, then the failover timeline; see the module doc."""
    out: dict = {"throughput": {}, "latency": {}}
    with ShoalCluster(3, _topics()) as cluster:
        out["settle_seconds"] = round(cluster.wait_settled(), 2)
        for label, (topic, acks) in PATHS.items():
            out["throughput"][label] = _step(label, lambda: perf.produce(
                cluster.urls, topic, records=records, linger_ms=5, acks=acks), step_timeout)  # fmt: skip
        for rate in rates:
            for label, (topic, acks) in PATHS.items():
                out["latency"].setdefault(label, {})[str(rate)] = _step(f"{label} at {rate}/s", lambda: perf.produce(
                    cluster.urls, topic, duration=seconds, rate=rate, linger_ms=5, acks=acks), step_timeout)  # fmt: skip
        try:
            out["failover"] = _run(failover_timeline(cluster, "failover", failover_rate, *failover_seconds))
        except Exception as exc:  # noqa: BLE001 - recorded, the rest of the report stands
            log.exception("failover timeline failed")
            out["failover"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def _step(label: str, make, timeout: float) -> dict:
    async def bounded():
        async with asyncio.timeout(timeout):
            return await make()

    start = time.perf_counter()
    try:
        result = _run(bounded())
    except Exception as exc:  # noqa: BLE001
        log.exception("replicated %s failed", label)
        return {"error": f"{type(exc).__name__}: {exc}"}
    log.info("replicated %-28s %10.0f rec/s  (%.1fs)", label, result.records_per_s, time.perf_counter() - start)
    return result.to_dict()


async def failover_timeline(cluster: ShoalCluster, topic: str, rate: int, before: float, after: float) -> dict:
    """Records acknowledged per ``BIN`` at ``rate`` records/s (``acks=all``), the leader
    SIGKILLed ``before`` seconds in; runs ``after`` seconds more, then waits for the rest."""
    value = os.urandom(100)
    acked: Counter = Counter()
    failed = 0
    async with AsyncProducer(cluster.urls, linger_ms=5, acks="all") as producer:
        await producer.send_and_wait(topic, value)
        leader = await asyncio.to_thread(cluster.leader, topic)
        loop = asyncio.get_running_loop()
        start = time.perf_counter()

        def batch_done(batch, fut) -> None:
            nonlocal failed
            if fut.exception() is not None:
                failed += batch.count
            else:
                acked[int((time.perf_counter() - start) / BIN)] += batch.count

        killed_at = None

        def kill() -> None:
            nonlocal killed_at
            killed_at = time.perf_counter() - start
            cluster.brokers[leader].kill9()

        loop.call_later(before, kill)
        pacer = perf.Pacer(rate, duration=before + after)
        send = producer.send
        while not pacer.done:
            for _ in pacer.take() or await pacer.due():
                fut = await send(topic, value)
                if fut.index == 0:  # one callback per batch, counting the whole batch
                    fut.shared.add_done_callback(lambda f, b=fut.batch: batch_done(b, f))
        await producer.flush()
        await asyncio.sleep(0)
    new_leader = await asyncio.to_thread(cluster.leader, topic)
    bins = max(acked, default=0) + 1
    series = [acked.get(i, 0) / BIN for i in range(bins)]
    k = int(killed_at / BIN) + 1 if killed_at is not None else 0
    gap = next((i for i in range(k, bins) if acked.get(i)), None)  # first bin with acks after the kill
    return {
        "rate": rate,
        "bin_seconds": BIN,
        "killed_broker": leader,
        "killed_at_seconds": round(killed_at, 3) if killed_at is not None else None,
        "new_leader": new_leader,
        "first_ack_after_kill_seconds": round(gap * BIN - killed_at, 2) if gap is not None else None,
        "records_acked": sum(acked.values()),
        "records_failed": failed,
        "records_per_s": series,
    }


def many_partitions_run(partitions: int, idle_seconds: float, settle_timeout: float = 180, move_timeout: float = 120) -> dict:
    """Resources of three brokers holding ``partitions`` partitions at factor 3, and the
    time from a broker's SIGKILL until every partition it led has a live leader."""
    out: dict = {"partitions": partitions, "replication_factor": 3, "brokers": 3}
    topics = {"many": {"partitions": partitions, "replication_factor": 3, "min_insync_replicas": 2}}
    start = time.monotonic()
    try:
        cluster = ShoalCluster(3, topics, lease_ttl_ms=3000).__enter__()  # the default lease
    except ServerError as exc:
        return {**out, "error": str(exc)}
    try:
        out["start_seconds"] = round(time.monotonic() - start, 2)
        try:
            out["settle_seconds"] = round(cluster.wait_settled(settle_timeout), 2)
        except ServerError as exc:
            states = cluster.states().get("many") or []
            out["error"] = f"{exc}: {sum(1 for s in states if s and s.get('leader'))} of {partitions} partitions have a leader"
            out["at_rest"] = _readings(cluster, 0)
            return out
        out["logs_open_seconds"] = round(_until_rss_is_steady(cluster), 2)
        out["at_rest"] = _readings(cluster, idle_seconds)
        victim = 1
        led = [p for p, s in enumerate(cluster.states(via=2).get("many") or []) if s and s.get("leader") == victim]
        out["killed_broker"], out["its_leaderships"] = victim, len(led)
        killed = time.monotonic()
        cluster.brokers[victim].kill9()

        left = [len(led)]

        def moved():
            states = cluster.states(via=2).get("many") or []
            left[0] = sum(1 for p in led if not states or not states[p] or states[p].get("leader") in (None, victim))
            return True if not left[0] else None

        done = poll(moved, timeout=move_timeout, interval=0.5)
        out["leaderships_moved_seconds"] = round(time.monotonic() - killed, 2) if done else None
        if not done:
            out["error"] = f"{left[0]} of broker {victim}'s {len(led)} leaderships not moved after {move_timeout:.0f}s"
        out["after_kill"] = _readings(cluster, idle_seconds)
    finally:
        cluster.stop()
    return out


def _until_rss_is_steady(cluster: ShoalCluster, timeout: float = 60) -> float:
    """Seconds until no broker's RSS grew over 2 s: the leaders are elected as soon as the
    states are in etcd, but each broker then still opens its thousands of logs."""
    start = time.monotonic()
    last: dict = {}

    def steady():
        now = {i: b.rss_bytes() for i, b in cluster.brokers.items() if b.alive()}
        done = bool(last) and all(now[i] <= last.get(i, 0) for i in now)
        last.clear()
        last.update(now)
        return True if done else None

    poll(steady, timeout=timeout, interval=2)
    return time.monotonic() - start


def _readings(cluster: ShoalCluster, idle_seconds: float) -> dict:
    """RSS, threads and (over ``idle_seconds``) CPU % of each live broker."""
    live = {i: b for i, b in cluster.brokers.items() if b.alive()}
    cpu0, t0 = {i: b.cpu_seconds() for i, b in live.items()}, time.monotonic()
    time.sleep(idle_seconds)  # the measuring interval
    wall = time.monotonic() - t0
    return {
        str(i): {
            "rss_mib": round(b.rss_bytes() / MIB, 1),
            "threads": b.threads(),
            "idle_cpu_percent": round(100 * (b.cpu_seconds() - cpu0[i]) / wall, 2) if idle_seconds else None,
        }
        for i, b in live.items()
    }
