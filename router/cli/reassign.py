"""Live reassignment from the CLI: ``shoal topology status``, ``shoal broker drain`` and
``shoal cluster rebalance-leaders``, and the replicated part of ``topology plan|apply``.

The CLI reads and writes etcd itself (the ``metadata:`` section of its cluster.yaml):
it writes targets (``MetadataStore.reassign_all``) and the drained set, and reads the
partition states; the partitions' leaders do the rest (``broker.replication.reassignment``).
The internal ``__consumer_offsets`` partitions are placed, moved and shown like those of
a declared topic.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import click

from shoal.router.internal_topics import placed_topics
from shoal.client.errors import ShoalError
from shoal.client.structs import TopicPartition
from shoal.router.cli.base import Options, action, global_options
from shoal.router.cli.output import CliError, emit, table
from shoal.router.cli.session import ClusterSession, reason
from shoal.router.metadata.etcd import EtcdClient
from shoal.router.metadata.store import MetadataStore
from shoal.router.reassign.placement import PlacementError, targets
from shoal.router.reassign.progress import human_bytes, moving, planned, sizes, with_rates
from shoal.router.topology import Topology

WAIT_INTERVAL_S = 1.0


@asynccontextmanager
async def open_store(topology: Topology) -> AsyncIterator[MetadataStore | None]:
    """The cluster's metadata store when ``topology`` is replicated, else None."""
    if topology.metadata is None:
        yield None
        return
    async with EtcdClient(topology.metadata.etcd, tls=topology.metadata.tls) as etcd:
        yield MetadataStore(etcd, topology.cluster)


def _need_replicated(topology: Topology) -> None:
    if topology.metadata is None:
        raise CliError(f"{topology.source} has no metadata: section: the cluster is not replicated")


async def plan_moves(session: ClusterSession, store: MetadataStore, candidate: Topology) -> tuple[list[dict], list[str]]:
    """The replica sets ``candidate`` changes, and why it may not be applied."""
    states, _ = await store.partitions()
    drained, _ = await store.drained()
    drained &= set(candidate.broker_ids)
    refusals = []
    kept = set(candidate.broker_ids)
    holding: dict[int, list[str]] = {}
    for tp, state in sorted(states.items()):
        for r in state.replicas:
            if r not in kept:
                holding.setdefault(r, []).append(f"{tp.topic}/{tp.partition}")
    for broker_id, parts in sorted(holding.items()):
        refusals.append(
            f"broker {broker_id} is removed but still holds replicas of {len(parts)} partitions "
            f"({', '.join(parts[:5])}{', ...' if len(parts) > 5 else ''}): drain it first (shoal broker drain --id {broker_id})"
        )
    live, _ = await store.live_brokers()
    try:
        size = await sizes(session.api, states, live)
        rows = planned(placed_topics(candidate), states, drained, size)
    except PlacementError as exc:
        return [], refusals + [str(exc)]
    return rows, refusals


async def start_moves(store: MetadataStore, topology: Topology) -> int:
    """Store ``topology`` in etcd (the brokers do too) and write the targets; how many
    partitions got a new target."""
    await store.apply_topology(topology)
    drained, revision = await store.drained()
    if drained - set(topology.broker_ids):  # a drained broker left the topology: forget it
        await store.set_drained(drained & set(topology.broker_ids), revision)
    return len(await store.reassign_all(topology))


async def status_rows(session: ClusterSession, store: MetadataStore, earlier=None, seconds: float = 0.0) -> list[dict]:
    states, _ = await store.partitions()
    live, _ = await store.live_brokers()
    rows = await moving(session.api, list(live.values()) or session.urls, states)
    return with_rates(rows, earlier or [], seconds)


async def wait_moves(session: ClusterSession, store: MetadataStore, topology: Topology, output: str) -> None:
    """Print the progress every WAIT_INTERVAL_S (text on stderr) until nothing moves."""
    earlier, at = [], time.monotonic()
    while True:
        rows = await status_rows(session, store, earlier, time.monotonic() - at)
        if not rows:
            return
        if output == "text":
            sys.stderr.write(render_moving(rows) + "\n")
        earlier, at = rows, time.monotonic()
        await asyncio.sleep(WAIT_INTERVAL_S)


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = width if total <= 0 else min(width, width * done // total)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def render_moving(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no partition is moving\n"

    def ids(xs: list[int]) -> str:
        return ",".join(map(str, xs)) or "-"

    def step(r: dict) -> str:
        if any(a not in r["isr"] for a in r["adding"]):
            return "copying"
        if r["leader"] in r["removing"] or (r["target"] and r["leader"] != r["target"][0]):
            return "handing off"
        return "finishing"

    return table(
        ["partition", "replicas", "adding", "removing", "leader", "step", "progress", "copied", "eta"],
        ([f"{r['topic']}/{r['partition']}", ids(r["replicas"]), ids(r["adding"]), ids(r["removing"]), r["leader"],
          step(r), _bar(r["bytes_copied"], r["bytes_to_copy"]),
          f"{human_bytes(r['bytes_copied'])}/{human_bytes(r['bytes_to_copy'])}",
          f"{r['eta_s']:g}s" if r.get("eta_s") is not None else "-"] for r in rows),
    )


@click.command("status")
@global_options
@click.option("--wait", is_flag=True, help="Follow the moves until every partition is in place.")
@action("show reassignment status")
def status(opts: Options, wait: bool) -> None:
    """Show the partitions being moved, with the bytes copied and an ETA

    Replicated clusters only. Each moving partition: its replicas, those being added
    and removed, its leader, the step it is at (copying, handing off, finishing), and
    the bytes its new replicas copied of the bytes to copy, with an ETA from the rate
    over the last second. The same state is in GET /v1/cluster (partitions[].adding,
    partitions[].removing; reassignments on each leader).

    EXAMPLES

      shoal topology status

      shoal topology status --wait -o json
    """
    topology = opts.load()
    emit(opts.output, asyncio.run(_status(topology, wait, opts.output)), _render_status)


def _render_status(view: dict[str, Any]) -> str:
    rate = view["throttle_bytes_per_s"]
    return render_moving(view["moving"]) + f"throttle: {human_bytes(rate) + '/s per leader' if rate else 'none'}\n"


async def _status(topology: Topology, wait: bool, output: str) -> dict[str, Any]:
    _need_replicated(topology)
    async with ClusterSession([b.url for b in topology.brokers]) as session, open_store(topology) as store:
        if wait:
            await wait_moves(session, store, topology, output)
        throttle = await store.throttle()
        first = await status_rows(session, store)
        if first:
            await asyncio.sleep(WAIT_INTERVAL_S)
            first = await status_rows(session, store, first, WAIT_INTERVAL_S)
        return {"throttle_bytes_per_s": throttle, "moving": first}


@click.command("drain")
@global_options
@click.option("--id", "broker_id", type=int, required=True, help="The broker to move every replica off.")
@click.option("--undo", is_flag=True, help="Let the broker hold replicas again (moves them back).")
@click.option("--wait", is_flag=True, help="Follow the moves until the broker holds nothing.")
@click.option("--throttle", type=click.IntRange(0), metavar="BYTES_PER_S",
              help="The bytes/s each leader may send to replicas being added (0: no limit).")
@action("drain broker")
def drain(opts: Options, broker_id: int, undo: bool, wait: bool, throttle: int | None) -> None:
    """Move every replica off a broker, keeping each topic's replication factor

    Replicated clusters only. The broker is left out of the placement (the rendezvous
    ranking of the other brokers decides where its replicas go, exactly where removing
    it from cluster.yaml would put them), and the partitions' leaders move the replicas
    as `topology apply` does. Once it holds nothing, remove it from cluster.yaml, stop
    it and apply: that moves nothing. --undo puts it back in the placement.

    EXAMPLES

      shoal broker drain --id 1 --wait

      shoal broker drain --id 1 --undo
    """
    view = asyncio.run(_drain(opts.load(), broker_id, undo, wait, opts.output, throttle))
    emit(opts.output, view, _render_drain)


async def _drain(
    config: Topology, broker_id: int, undo: bool, wait: bool, output: str, throttle: int | None
) -> dict[str, Any]:
    _need_replicated(config)
    async with ClusterSession([b.url for b in config.brokers]) as session, open_store(config) as store:
        topology = await store.topology()
        if topology is None:
            raise CliError("etcd holds no topology yet: start the cluster first")
        if broker_id not in topology.broker_ids:
            raise CliError(f"broker {broker_id} is not in the applied topology (epoch {topology.epoch})")
        for _ in range(10):
            drained, revision = await store.drained()
            wanted = (drained - {broker_id}) if undo else (drained | {broker_id})
            try:
                targets(placed_topics(topology), wanted & set(topology.broker_ids))  # every factor must still fit
            except PlacementError as exc:
                raise CliError(f"cannot drain broker {broker_id}: {exc}") from None
            if wanted == drained or await store.set_drained(wanted, revision):
                break
        else:
            raise CliError("the drained brokers kept changing; try again")
        if throttle is not None:
            await store.set_throttle(throttle or None)
        started = await store.reassign_all(topology)
        if wait:
            await wait_moves(session, store, topology, output)
        states, _ = await store.partitions()
    holds = sorted(f"{tp.topic}/{tp.partition}" for tp, s in states.items() if broker_id in s.replicas)
    return {"broker": broker_id, "drained": not undo, "started": len(started), "holds": holds}


def _render_drain(view: dict[str, Any]) -> str:
    what = "drained" if view["drained"] else "back in the placement"
    holds = view["holds"]
    tail = (
        f"it still holds {len(holds)} partitions (shoal topology status follows the moves)"
        if holds and view["drained"] else
        "it holds no replica: remove it from cluster.yaml, stop it and apply" if view["drained"] else
        f"it holds {len(holds)} partitions"
    )
    return f"broker {view['broker']} {what}: {view['started']} partitions started moving; {tail}\n"


@click.command("rebalance-leaders")
@global_options
@click.option("--batch", type=click.IntRange(1, 64), default=3, show_default=True,
              help="Hand-offs under way at once.")
@action("rebalance leaders")
def rebalance_leaders(opts: Options, batch: int) -> None:
    """Give leadership back to the preferred leaders, a few partitions at a time

    Replicated clusters only. After a failover the partitions a returning broker used
    to lead stay with their new leaders. For each partition whose preferred leader (the
    first of its replicas) is live and in sync but does not lead, the current leader
    hands off under control: it stops taking appends, waits for the preferred leader to
    reach its log end, and gives it leadership at leader epoch + 1. Prints each
    hand-off with how long appends were refused.

    EXAMPLES

      shoal cluster rebalance-leaders

      shoal cluster rebalance-leaders --batch 1 -o json
    """
    view = asyncio.run(_rebalance(opts.load(), batch))
    emit(opts.output, view, _render_rebalance)


async def _rebalance(config: Topology, batch: int) -> dict[str, Any]:
    _need_replicated(config)
    async with ClusterSession([b.url for b in config.brokers]) as session, open_store(config) as store:
        states, _ = await store.partitions()
        live, _ = await store.live_brokers()
        todo = [
            (tp, s) for tp, s in sorted(states.items())
            if not s.moving and s.leader != s.replicas[0] and s.replicas[0] in s.isr and s.replicas[0] in live
            and s.leader in live
        ]
        limit = asyncio.Semaphore(batch)

        async def one(tp: TopicPartition, state) -> dict[str, Any]:
            row = {"topic": tp.topic, "partition": tp.partition, "from": state.leader, "to": state.replicas[0]}
            async with limit:
                try:
                    answer = await session.api.hand_off(live[state.leader], tp.topic, tp.partition, state.replicas[0])
                except ShoalError as exc:
                    return row | {"status": reason(exc), "refused_ms": None, "leader_epoch": None}
            return row | {"status": "OK", "refused_ms": answer["refused_ms"], "leader_epoch": answer["leader_epoch"]}

        rows = list(await asyncio.gather(*(one(tp, s) for tp, s in todo)))
    return {"handoffs": rows}


def _render_rebalance(view: dict[str, Any]) -> str:
    rows = view["handoffs"]
    if not rows:
        return "every partition is led by its preferred leader (or it is not in sync)\n"
    return table(
        ["partition", "from", "to", "leader-epoch", "refused-ms", "status"],
        ([f"{r['topic']}/{r['partition']}", r["from"], r["to"], r["leader_epoch"] if r["leader_epoch"] is not None else "-",
          r["refused_ms"] if r["refused_ms"] is not None else "-", r["status"]] for r in rows),
    )
