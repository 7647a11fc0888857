"""Cut links on a replicated cluster of real brokers and a real etcd, through ``Proxy``:

- a follower cut off its leader leaves the ISR after ``replica_lag_time_max_ms``;
  ``acks=all`` goes on with ``min_insync_replicas`` met; healed, it catches up and rejoins;
- a leader cut off etcd and its followers stops acknowledging before its lease can
  expire, another replica is elected; healed, the old leader follows and truncates
  what it wrote alone.

After each, ``check_history``: nothing acknowledged lost or doubled, no consumer saw two
records at one offset, committed offsets never went back, replicas byte-identical.
Short by default; ``SHOAL_SOAK=1`` runs the loops (each fault five times).

Links between brokers are cut (connections reset, new ones refused), the leader's link
to etcd blackholed (its lease renewals hang). A client that learnt a broker's url from
a peer shares that peer's proxied link to it; a blackholed link would hold the
client's requests too, and the client retries a request that got no answer at the same
broker without asking the cluster again.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time

import pytest

from tests.faults.checker import (
    TOPIC, Workload, check_committed, check_history, in_sync, produce, state_of, stored_frames,
)  # fmt: skip
from tests.faults.proxy import Proxy
from tests.harness import env_flag
from tests.metadata.helpers import poll

LAG_MS = 3000
TTL_MS = 2000
SOAK_ROUNDS = 5
soak_only = pytest.mark.skipif(not env_flag("SHOAL_SOAK"), reason="SHOAL_SOAK=1 runs it; the default run cuts once")


class Mesh:
    """A replicated cluster whose every link goes through a ``Proxy``: ``etcd[b]`` carries
    broker b's etcd requests, ``link[a, b]`` broker a's requests to broker b (its fetches
    when b leads). Clients and the test reach each broker directly."""

    def __init__(self, cluster, etcd_server):
        self.cluster = cluster
        ids = list(cluster.ports)
        self.etcd = {b: Proxy(etcd_server.client_port).start() for b in ids}
        self.link = {(a, b): Proxy(cluster.ports[b]).start() for a in ids for b in ids if a != b}
        for a in ids:
            config = copy.deepcopy(cluster.config)
            config["metadata"]["etcd"] = [self.etcd[a].url]
            for b in ids:
                if b != a:
                    config["brokers"][b - 1]["url"] = self.link[a, b].url
            cluster.write_broker_config(a, config)

    def into(self, broker: int) -> list[Proxy]:
        """The other brokers' links to ``broker`` (their fetches while it leads). Its own
        links to them stay: they carry nothing while it leads."""
        return [p for (a, b), p in self.link.items() if b == broker]

    def stop(self) -> None:
        for proxy in [*self.etcd.values(), *self.link.values()]:
            proxy.stop()


@pytest.fixture
def mesh(cluster_factory, etcd_server, cluster_name):
    """Three brokers behind a mesh of proxies, one partition at factor 3 with min_insync 2."""
    cluster = cluster_factory(
        3, {TOPIC: 1}, name=cluster_name, start=False,
        metadata={"etcd": [etcd_server.url], "lease_ttl_ms": TTL_MS, "replica_lag_time_max_ms": LAG_MS},
        replication_factor=3, min_insync_replicas=2,
    )  # fmt: skip
    mesh = Mesh(cluster, etcd_server)
    cluster.start()
    yield mesh
    cluster.stop()
    mesh.stop()


async def isr_is(cluster, via: int, wanted) -> float:
    """Wait until the ISR (seen by broker ``via``) is ``wanted``; the time it took."""
    start = time.monotonic()

    def check():
        s = state_of(cluster.url(via))
        return s if s and sorted(s["isr"]) == sorted(wanted) else None

    await poll(lambda: asyncio.to_thread(check), timeout=60)
    return time.monotonic() - start


async def cut_follower(cluster, leader: int, follower: int, link: Proxy, work: Workload) -> tuple[float, float]:
    """Cut ``follower``'s link to its leader, see it leave the ISR, acks=all go on, heal, see it rejoin."""
    await work.acked_count(30)
    link.cut()
    left = await isr_is(cluster, leader, [b for b in (1, 2, 3) if b != follower])
    await work.acked_count(50)  # acks=all with the two replicas left
    link.heal()
    rejoined = await isr_is(cluster, leader, [1, 2, 3])
    await work.acked_count(30)
    return left, rejoined


async def test_a_follower_cut_off_its_leader_leaves_the_isr_and_rejoins(mesh, capsys):
    await follower_cuts(mesh, 1, capsys)


@pytest.mark.soak
@soak_only
async def test_follower_cut_loop(mesh, capsys):
    await follower_cuts(mesh, SOAK_ROUNDS, capsys)


async def follower_cuts(mesh, rounds: int, capsys) -> None:
    cluster = mesh.cluster
    leader = (await in_sync(cluster))["leader"]
    follower = next(b for b in (1, 2, 3) if b != leader)
    async with Workload(cluster.urls) as work:
        times = [await cut_follower(cluster, leader, follower, mesh.link[follower, leader], work) for _ in range(rounds)]
        history = await work.stop()
    await check_history(cluster, history, leader=leader)
    with capsys.disabled():
        print(f"\nfollower cut x{rounds}: {len(history.acked)} acknowledged, 0 lost, 0 duplicated, "
              f"{len(history.seen)} read; (out of the ISR s, back in s): "
              + ", ".join(f"({a:.2f}, {b:.2f})" for a, b in times))  # fmt: skip


class Prober:
    """``acks=1`` produces straight to one broker, in a thread: (sent, answered, status, value)."""

    def __init__(self, url: str):
        self.url = url
        self.answers: list[tuple[float, float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            value = f"alone-{n}"
            n += 1
            sent = time.monotonic()
            try:
                status, _ = produce(self.url, value, acks="1")
            except OSError:
                status = 0
            self.answers.append((sent, time.monotonic(), status, value))
            self._stop.wait(0.02)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)


async def isolate_leader(cluster, leader: int, mesh: Mesh, work: Workload) -> dict:
    """Blackhole ``leader``'s link to etcd and cut its followers' links to it while a
    client still reaches it; heal once another replica leads; return what was measured."""
    survivor = next(b for b in (1, 2, 3) if b != leader)
    links = [mesh.etcd[leader], *mesh.into(leader)]
    await work.acked_count(30)
    with Prober(cluster.url(leader)) as prober:
        cut_at = time.monotonic()
        mesh.etcd[leader].blackhole()
        for link in mesh.into(leader):
            link.cut()

        def elected():
            s = state_of(cluster.url(survivor))
            return s if s and s["leader"] not in (leader, -1) else None

        new = await poll(lambda: asyncio.to_thread(elected), timeout=30, interval=0.02)
        elected_at = time.monotonic()
        await work.acked_count(30)  # the new leader acknowledges acks=all
    alone = [a for a in prober.answers if a[0] > cut_at]
    acked_alone = [a for a in alone if a[2] == 200]
    refusals = [a for a in alone if a[2] == 503]
    assert acked_alone, "the isolated leader acknowledged nothing while its lease was valid"
    assert refusals and refusals[0][1] < elected_at, "the leader did not refuse before another was elected"
    assert all(a[0] < refusals[0][0] for a in acked_alone), "the leader acknowledged again after refusing"
    for link in links:
        link.heal()
    healed_at = time.monotonic()
    await isr_is(cluster, new["leader"], [1, 2, 3])
    rejoined = time.monotonic() - healed_at
    await work.acked_count(30)
    return {"new": new["leader"], "alone": [a[3].encode() for a in acked_alone],
            "refused_s": refusals[0][1] - cut_at, "elected_s": elected_at - cut_at, "rejoined_s": rejoined}  # fmt: skip


async def test_an_isolated_leader_stops_acknowledging_and_truncates_what_it_wrote_alone(mesh, capsys):
    await leader_isolations(mesh, 1, capsys)


@pytest.mark.soak
@soak_only
async def test_leader_isolation_loop(mesh, capsys):
    await leader_isolations(mesh, SOAK_ROUNDS, capsys)


async def leader_isolations(mesh, rounds: int, capsys) -> None:
    cluster = mesh.cluster
    measured, alone, old_leaders = [], set(), []
    async with Workload(cluster.urls) as work:
        for _ in range(rounds):
            leader = (await in_sync(cluster))["leader"]
            old_leaders.append(leader)
            measured.append(await isolate_leader(cluster, leader, mesh, work))
            alone |= set(measured[-1]["alone"])
        history = await work.stop()
    log = await check_history(cluster, history, leader=measured[-1]["new"], committed=False)
    assert not {value for _, value in log} & alone, "what an isolated leader wrote alone was not truncated"
    for old in old_leaders:
        assert "truncating from" in cluster.tail(old, 2000)
    frames = [stored_frames(cluster, b) for b in (1, 2, 3)]
    assert frames[0] == frames[1] == frames[2]
    with capsys.disabled():
        print(f"\nleader isolated x{rounds}: {len(history.acked)} acknowledged (acks=all), 0 lost, 0 duplicated; "
              f"{len(alone)} acks=1 records written alone, all truncated; (refusing s, new leader in etcd s, "
              "back in the ISR after the heal s): "
              + ", ".join(f"({r['refused_s']:.2f}, {r['elected_s']:.2f}, {r['rejoined_s']:.2f})" for r in measured))  # fmt: skip
    check_committed(history)
