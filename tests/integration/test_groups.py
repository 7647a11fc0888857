"""Consumer groups with real brokers and real consumer processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from shoal.client import AsyncConsumer, AsyncProducer
from shoal.router.hashing import group_coordinator
from tests.harness import http_json

SESSION_MS = 2000
TOPIC = "t"


class Workers:
    """Consumer processes of one group, each writing what it processed to its own file."""

    def __init__(self, cluster, root: Path, group: str = "g"):
        self.cluster, self.root, self.group = cluster, root, group
        self.procs: dict[str, subprocess.Popen] = {}
        coordinator = group_coordinator(group, list(cluster.ports))
        self.members_url = f"{cluster.url(coordinator)}/v1/groups/{group}/members"

    def start(self, name: str, *extra: str) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.group_worker", ",".join(self.cluster.urls), self.group,
             TOPIC, str(self.root / f"{name}.out"), "--session", str(SESSION_MS), *extra],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def describe(self) -> dict:
        return http_json("GET", self.members_url)[1]

    def wait_stable(self, members: int, timeout: float = 30.0) -> dict:
        """Poll until ``members`` members hold disjoint shares covering every partition."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.describe()
            held = [(t, p) for m in view["members"] for t, ps in m["assignment"].items() for p in ps]
            if (view["state"] == "stable" and len(view["members"]) == members
                    and sorted(held) == [(TOPIC, p) for p in range(12)]):
                return view
            assert time.monotonic() < deadline, f"group never settled with {members} members: {view}"
            time.sleep(0.05)

    def member_of(self, name: str, view: dict, timeout: float = 10.0) -> dict:
        """The member entry of worker ``name`` (it writes its member id next to its output)."""
        path = self.root / f"{name}.out.member"
        deadline = time.monotonic() + timeout
        while True:
            member_id = path.read_text() if path.exists() else ""
            found = [m for m in view["members"] if m["member_id"] == member_id]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"worker {name} never reported a member of {view}"
            time.sleep(0.05)

    def processed(self) -> set[tuple[int, int]]:
        out = set()
        for path in self.root.glob("*.out"):
            for line in path.read_text().splitlines():
                p, o = line.split()
                out.add((int(p), int(o)))
        return out


    def holdings(self) -> dict[int, list[tuple[str, float, float]]]:
        """partition -> [(worker, from, until)]: when each worker held it (until inf: still)."""
        out: dict[int, list[tuple[str, float, float]]] = {}
        for path in self.root.glob("*.out.events"):
            worker = path.name.split(".")[0]
            since: dict[int, float] = {}
            for line in path.read_text().splitlines():
                at, sign, parts = line.split(" ")
                for p in map(int, filter(None, parts.split(","))):
                    if sign == "+":
                        since[p] = float(at)
                    else:
                        out.setdefault(p, []).append((worker, since.pop(p), float(at)))
            for p, start in since.items():
                out.setdefault(p, []).append((worker, start, float("inf")))
        return out


def overlaps(holdings: dict[int, list[tuple[str, float, float]]]) -> list[str]:
    """Every moment two workers held one partition, as readable lines."""
    found = []
    for p, spans in sorted(holdings.items()):
        spans = sorted(spans, key=lambda s: s[1])
        for (w1, a1, b1), (w2, a2, b2) in zip(spans, spans[1:]):
            if a2 < b1:
                found.append(f"partition {p}: {w1} held it until {b1:.3f}, {w2} from {a2:.3f}")
    return found


def shares(view: dict) -> dict[str, set[int]]:
    return {m["member_id"]: set(m["assignment"].get(TOPIC, [])) for m in view["members"]}


@pytest.fixture
def workers(cluster_factory, tmp_path):
    cluster = cluster_factory(3, {TOPIC: 12})
    w = Workers(cluster, tmp_path)
    yield w
    w.stop_all()


async def produce(urls, n: int) -> None:
    async with AsyncProducer(urls, linger_ms=2) as producer:  # leaving flushes: all acknowledged
        for i in range(n):
            await producer.send(TOPIC, f"v{i}".encode(), key=f"k{i}".encode())


async def test_members_share_partitions_and_take_over_from_a_killed_one(workers):
    """Disjoint shares cover every partition; a SIGKILLed member's share moves, and its late commit is refused."""
    await produce(workers.cluster.urls, 600)
    for name in ("a", "b", "c"):
        workers.start(name)
    before = workers.wait_stable(3)
    assert all(len(share) == 4 for share in shares(before).values())

    victim_proc = next(iter(workers.procs))
    victim = workers.member_of(victim_proc, before)
    started = time.monotonic()
    workers.kill(victim_proc)
    after = workers.wait_stable(2, timeout=SESSION_MS / 1000 + 15)
    took = time.monotonic() - started
    print(f"reassignment after SIGKILL took {took:.2f}s (session {SESSION_MS} ms)")
    assert victim["member_id"] not in shares(after)

    partition = victim["assignment"][TOPIC][0]
    owner = workers.cluster.owner(TOPIC, partition)
    status, body = http_json(
        "PUT", f"{workers.cluster.url(owner)}/v1/groups/g/topics/{TOPIC}/partitions/{partition}/offset",
        {"offset": 0, "member_id": victim["member_id"], "generation": victim["generation"]},
    )
    assert (status, body["code"]) == (409, "UNKNOWN_MEMBER_ID")


async def test_every_record_processed_while_consumers_keep_dying(workers):
    """At least once: with a consumer killed every few seconds, every record is processed
    and the committed offsets end at the high watermarks."""
    cluster = workers.cluster
    for name in ("a", "b", "c"):
        workers.start(name)
    workers.wait_stable(3)
    producing = asyncio.create_task(produce(cluster.urls, 3000))
    for round_ in range(3):
        await asyncio.sleep(1.5)
        workers.kill(next(iter(workers.procs)))
        workers.start(f"r{round_}")
    await producing
    workers.wait_stable(3)

    async with aiohttp.ClientSession() as http:
        hws = {}
        for p in range(12):
            async with http.get(f"{cluster.url(cluster.owner(TOPIC, p))}/v1/topics/{TOPIC}/partitions/{p}/offsets") as r:
                hws[p] = (await r.json())["high_watermark"]
    assert sum(hws.values()) == 3000
    deadline = time.monotonic() + 30
    while True:
        committed = {}
        for p in range(12):
            url = f"{cluster.url(cluster.owner(TOPIC, p))}/v1/groups/g/topics/{TOPIC}/partitions/{p}/offset"
            committed[p] = http_json("GET", url)[1]["offset"]
        if committed == hws:
            break
        assert time.monotonic() < deadline, f"committed {committed} never reached {hws}"
        await asyncio.sleep(0.1)
    done = workers.processed()
    missing = [(p, o) for p in range(12) for o in range(hws[p]) if (p, o) not in done]
    assert not missing


async def test_sticky_rebalance_moves_only_what_the_newcomer_takes(workers):
    for name in ("a", "b", "c"):
        workers.start(name)
    before = shares(workers.wait_stable(3))
    workers.start("d")
    after = shares(workers.wait_stable(4))
    newcomer = next(m for m in after if m not in before)
    moved = {p for m in before for p in before[m] - after[m]}
    assert moved == after[newcomer] and len(moved) == 3


async def test_static_member_restart_keeps_its_partitions(workers):
    session = ("--session", "8000")  # a process start fits in it even on a loaded machine
    workers.start("a", "--instance", "worker-a", *session)
    workers.start("b", "--instance", "worker-b", *session)
    before = workers.wait_stable(2)
    share_a = next(m for m in before["members"] if m["group_instance_id"] == "worker-a")
    workers.kill("a")
    workers.start("a2", "--instance", "worker-a", *session)
    deadline = time.monotonic() + 15
    while True:
        view = workers.describe()
        back = [m for m in view["members"] if m["group_instance_id"] == "worker-a"]
        if back and back[0]["member_id"] != share_a["member_id"]:
            break
        assert time.monotonic() < deadline, view
        time.sleep(0.05)
    assert back[0]["assignment"] == share_a["assignment"]
    assert view["generation"] == before["generation"]


async def test_a_member_that_stops_polling_leaves_and_reports_it(cluster_factory):
    cluster = cluster_factory(3, {TOPIC: 12})
    busy = AsyncConsumer(bootstrap=cluster.urls, group="g", max_poll_interval_ms=800, session_timeout_ms=SESSION_MS)
    busy.subscribe([TOPIC])
    idle_peer = AsyncConsumer(bootstrap=cluster.urls, group="g", session_timeout_ms=SESSION_MS)
    idle_peer.subscribe([TOPIC])
    async with busy, idle_peer:
        deadline = time.monotonic() + 20
        while len(idle_peer.assignment()) != 12:  # busy never polls: it leaves, the peer takes all
            await idle_peer.getmany(timeout_ms=100)
            assert time.monotonic() < deadline, idle_peer.group_health()
        health = busy.group_health()
        assert health["in_group"] is False and health["assignment"] == {}
        assert idle_peer.group_health()["in_group"] is True


def shoal(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shoal.router.cli.main", "--config", str(cluster.config_path), *args],
        capture_output=True, text=True, timeout=60,
    )


async def test_cli_describes_members_and_refuses_to_seek_a_live_group(workers):
    await produce(workers.cluster.urls, 120)
    workers.start("a")
    workers.start("b")
    view = workers.wait_stable(2)
    described = shoal(workers.cluster, "group", "describe", "g")
    print(described.stdout)
    assert described.returncode == 0, described.stderr
    assert "STATE        stable" in described.stdout
    for member in view["members"]:
        assert member["member_id"] in described.stdout
    refused = shoal(workers.cluster, "group", "seek", "g", "--to", "earliest", "--execute")
    assert refused.returncode == 1
    assert "2 live member(s)" in refused.stderr and "Traceback" not in refused.stderr
    workers.stop_all()
    workers.procs.clear()
    deadline = time.monotonic() + 15
    while workers.describe()["members"]:  # closed consumers leave at once
        assert time.monotonic() < deadline
        time.sleep(0.05)
    moved = shoal(workers.cluster, "group", "seek", "g", "--to", "earliest", "--execute")
    assert moved.returncode == 0, moved.stderr


async def test_blocking_consumers_share_a_group_and_commit_on_revoke(cluster_factory):
    """Blocking Consumers subscribe; a listener that commits when partitions go may call the consumer."""
    from shoal.client import Consumer

    cluster = cluster_factory(3, {TOPIC: 12})
    await produce(cluster.urls, 240)

    class CommitOnRevoke:
        def __init__(self):
            self.consumer = None
            self.revoked = set()

        def on_partitions_revoked(self, partitions):
            self.consumer.commit({tp: self.consumer.position(tp) for tp in partitions})
            self.revoked |= partitions

    def run() -> tuple[set, dict]:
        first_listener = CommitOnRevoke()
        first = Consumer(bootstrap=cluster.urls, group="sync", session_timeout_ms=SESSION_MS)
        first_listener.consumer = first
        first.subscribe([TOPIC], listener=first_listener)
        deadline = time.monotonic() + 20
        while len(first.assignment()) != 12:
            first.getmany(timeout_ms=100)
            assert time.monotonic() < deadline
        second = Consumer(bootstrap=cluster.urls, group="sync", session_timeout_ms=SESSION_MS)
        second.subscribe([TOPIC])
        while not (first.assignment() and second.assignment() and len(first.assignment() | second.assignment()) == 12):
            first.getmany(timeout_ms=50)
            second.getmany(timeout_ms=50)
            assert time.monotonic() < deadline, (first.group_health(), second.group_health())
        shares = (first.assignment(), second.assignment())
        second.close()
        first.close()
        return first_listener.revoked, shares

    revoked, (share_1, share_2) = await asyncio.to_thread(run)
    assert share_1.isdisjoint(share_2) and revoked == share_2
    committed = [
        http_json("GET", f"{cluster.url(cluster.owner(TOPIC, tp.partition))}/v1/groups/sync/topics/{TOPIC}/partitions/{tp.partition}/offset")[1]["offset"]
        for tp in sorted(revoked)
    ]
    assert all(c is not None for c in committed)


async def test_no_two_members_hold_a_partition_across_a_coordinator_restart(workers):
    """The coordinator is SIGKILLed and restarted under three consumers: the new one hands
    nothing out until the members of before have let go, so no partition is ever held twice."""
    session_ms = 6000  # longer than a broker restart: members still hold their shares when it is back
    cluster = workers.cluster
    for name in ("a", "b", "c"):
        workers.start(name, "--session", str(session_ms))
    before = workers.wait_stable(3)
    coordinator = group_coordinator(workers.group, list(cluster.ports))
    restarted = time.monotonic()
    cluster.kill(coordinator)
    cluster.start(coordinator)
    after = workers.wait_stable(3, timeout=session_ms / 1000 + 30)
    print(f"group stable again {time.monotonic() - restarted:.2f}s after the SIGKILL (session {session_ms} ms)")
    assert not set(shares(after)) & set(shares(before))  # every member joined again
    workers.stop_all()
    held = workers.holdings()
    assert sorted(held) == list(range(12)) and all(len(spans) >= 2 for spans in held.values())
    assert overlaps(held) == []


async def test_a_clean_coordinator_restart_keeps_members_and_shares(workers):
    """SIGTERM and restart of the coordinator: it stores the groups at stop and loads them
    at start, so the members carry on with their partitions: no rebalance, nothing lost."""
    session_ms = 15_000  # a broker restart fits in it even on a loaded machine
    cluster = workers.cluster
    for name in ("a", "b", "c"):
        workers.start(name, "--session", str(session_ms))
    before = workers.wait_stable(3, timeout=session_ms / 1000 + 30)  # a fresh cluster holds back first
    coordinator = group_coordinator(workers.group, list(cluster.ports))
    assert cluster.terminate(coordinator) == 0
    cluster.start(coordinator)
    restarted = time.monotonic()
    deadline = restarted + session_ms / 1000 + 10
    while True:  # every member has heartbeated to the restarted coordinator
        after = workers.describe()
        since_ms = (time.monotonic() - restarted) * 1000 - 50
        if after["members"] and all(m["last_heartbeat_ms_ago"] < since_ms for m in after["members"]):
            break
        assert time.monotonic() < deadline, after
        time.sleep(0.1)
    assert shares(after) == shares(before) and after["generation"] == before["generation"]
    assert "loaded 1 group(s) with members" in cluster.tail(coordinator)
    workers.stop_all()
    held = workers.holdings()
    assert all(len(spans) == 1 for spans in held.values()), held  # never lost, never moved


def test_group_max_size_and_empty_group_retention(cluster_factory):
    """One member beyond settings.group_max_size is refused with 409; a group left empty is
    forgotten by its coordinator after the retention, and its committed offset is kept."""
    cluster = cluster_factory(1, {TOPIC: 3}, start=False)
    cluster.config["settings"] = {"group_max_size": 2, "group_empty_retention_ms": 1000}
    cluster.config_path.write_text(yaml.safe_dump(cluster.config, sort_keys=False))
    cluster.start()
    url = f"{cluster.url(1)}/v1/groups/g/members"
    joined = [http_json("POST", url, {"topics": [TOPIC]}) for _ in range(2)]
    assert [status for status, _ in joined] == [200, 200]
    status, body = http_json("POST", url, {"topics": [TOPIC]})
    assert (status, body["code"], body["max_size"]) == (409, "GROUP_MAX_SIZE_REACHED", 2)
    assert "already has 2 members" in body["detail"]
    assert len(http_json("GET", url)[1]["members"]) == 2

    for _, member in joined:
        assert http_json("DELETE", f"{url}/{member['member_id']}")[0] == 200
    offset_url = f"{cluster.url(1)}/v1/groups/g/topics/{TOPIC}/partitions/0/offset"
    assert http_json("PUT", offset_url, {"offset": 0})[0] == 200
    assert http_json("GET", url)[1]["generation"] == 4  # two joins, two leaves
    deadline = time.monotonic() + 15
    while http_json("GET", url)[1]["generation"] != 0:  # forgotten: a group never seen
        assert time.monotonic() < deadline, "the empty group was never forgotten"
        time.sleep(0.1)
    assert http_json("GET", offset_url)[1]["offset"] == 0
