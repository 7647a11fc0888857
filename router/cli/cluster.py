"""``shoal cluster up|info`` and ``shoal broker start``: running and inspecting brokers."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

import click

from shoal.client.errors import ShoalError
from shoal.router.cli.base import Options, action, global_options
from shoal.router.cli.output import CliError, emit, key_values, note, sections, table
from shoal.router.cli.session import BrokerState, ClusterSession, newest
from shoal.router.cli.local_cluster import LocalCluster, LocalClusterError, LocalEtcd
from shoal.router.cluster_health import partition_health
from shoal.router.console.replicas import partition_states
from shoal.router.server.logs import FORMATS, LEVELS
from shoal.router.topology import Topology


@click.group()
@global_options
def cluster() -> None:
    """Run a local cluster and see what it is doing

    A cluster is the brokers of cluster.yaml. `up` runs all of them on this machine;
    `info` asks the running brokers for their health, the installed topology and who
    owns each partition.
    """


@cluster.command("up")
@global_options
@click.option("--ready-timeout", type=float, default=30.0, show_default=True, metavar="SECONDS",
              help="How long every broker has to answer its health check.")
@click.option("--grace", type=float, default=10.0, show_default=True, metavar="SECONDS",
              help="How long brokers have to stop after SIGTERM before they are killed.")
@click.option("--log-level", type=click.Choice(LEVELS), default="info", show_default=True,
              help="The brokers' log level.")
@action("run cluster")
def up(opts: Options, ready_timeout: float, grace: float, log_level: str) -> None:
    """Start every broker of cluster.yaml here; Ctrl-C stops them all

    Each broker runs as `python -m shoal.broker --config PATH --id N`, storing its data
    in its data_dir (default data/broker-<id>) and its log in <data_dir>.log. With
    metadata.start_local, one etcd runs too (data in data/etcd, log in data/etcd.log):
    started first, healthy before the brokers are waited for, stopped last. The
    command prints where the brokers listen once every one of them answers, then
    waits. Ctrl-C (or SIGTERM) stops them: SIGTERM, then SIGKILL after --grace
    seconds.

    A broker that dies (a crash, kill -9) is restarted after 1s, then 2s, 4s, ...
    up to 30s if it keeps dying; the others keep serving, and one line on stderr
    says which broker died, how, and when it is back. A broker that exits cleanly
    (kill <pid>: SIGTERM) stays down; the line gives the command to start it. If a
    broker dies before every broker answered, or the local etcd dies, everything
    stops and the command exits 1.

    EXAMPLES

      shoal cluster up

      shoal cluster up --config deploy/cluster.yaml --log-level debug
    """
    topology = opts.load()
    local = LocalCluster(opts.config, topology, log_level=log_level, ready_timeout_s=ready_timeout, grace_s=grace)
    asyncio.run(_run_up(opts, local))


async def _run_up(opts: Options, local: LocalCluster) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        local.start()
        ready = asyncio.create_task(local.wait_ready())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not ready.done():
            ready.cancel()
            return
        ready.result()
        emit(opts.output, up_view(local), render_up)
        topo = local.topology
        with_etcd = f" and etcd at {local.etcd.url} (log {local.etcd.log_path})" if local.etcd is not None else ""
        note(f"cluster {topo.cluster} (epoch {topo.epoch}) is up with {len(local.brokers)} brokers{with_etcd}; Ctrl-C stops it")
        died = await local.supervise(stop, note)
        if died is not None:
            raise LocalClusterError(died.describe_exit())
    except LocalClusterError as exc:
        raise CliError(str(exc)) from None
    finally:
        running = sum(b.running for b in local.brokers)
        etcd_running = local.etcd is not None and local.etcd.running
        killed = await local.stop()
        if running:
            note(f"stopped {running} broker{'s' if running > 1 else ''}" + (f" (killed {', '.join(map(str, killed))})" if killed else ""))
        if etcd_running:
            note("stopped etcd")


def up_view(local: LocalCluster) -> dict[str, Any]:
    return {
        "cluster": local.topology.cluster,
        "epoch": local.topology.epoch,
        "brokers": [
            {
                "id": b.spec.id,
                "url": b.spec.url,
                "pid": b.proc.pid if b.proc else None,
                "data_dir": b.spec.data_dir,
                "log": str(b.log_path),
            }
            for b in local.brokers
        ],
        **({"etcd": _etcd_view(local.etcd)} if local.etcd is not None else {}),
    }


def _etcd_view(etcd: LocalEtcd) -> dict[str, Any]:
    return {"url": etcd.url, "pid": etcd.proc.pid if etcd.proc else None, "data_dir": etcd.data_dir, "log": str(etcd.log_path)}


def render_up(view: dict[str, Any]) -> str:
    return table(
        ["id", "url", "pid", "data-dir", "log"],
        ([b["id"], b["url"], b["pid"], b["data_dir"], b["log"]] for b in view["brokers"]),
    )


@cluster.command("info")
@global_options
@action("get cluster info")
def info(opts: Options) -> None:
    """Show the brokers, their health, the epoch, topics and partition owners

    The brokers listed in cluster.yaml are asked for their health and their installed
    topology; the highest epoch wins. A broker that does not answer is shown as down.

    In a replicated cluster (metadata: in cluster.yaml) OWNERS are the current
    leaders, each broker's row counts the partitions it LEADS and holds REPLICAS of,
    and two more sections list the UNDER-REPLICATED partitions (fewer in-sync
    replicas than replicas: a replica is down or behind) and the OFFLINE ones (no
    leader, or a leader that does not answer: nobody serves them), with their leader,
    leader epoch, replicas and ISR, as etcd holds them.

    EXAMPLES

      shoal cluster info

      shoal cluster info -o json | jq '.topics[] | {name, owners}'

      shoal cluster info -o json | jq '.under_replicated | length'
    """
    emit(opts.output, asyncio.run(_info(opts.load())), render_info)


async def _info(config: Topology) -> dict[str, Any]:
    async with ClusterSession([b.url for b in config.brokers], timeout_s=3) as session:
        states = await session.survey()
        running = newest(states)
        known = {s.url for s in states}
        states += await session.survey([b.url for b in running.brokers if b.url not in known])
        body = None
        for s in states:  # the partition states, as a broker at the running epoch mirrors them from etcd
            if s.topology is not None and s.topology.epoch == running.epoch:
                try:
                    body = await session.api.cluster(s.url)
                    break
                except ShoalError:
                    continue
    return info_view(running, states, body)


def info_view(running: Topology, states: list[BrokerState], cluster: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cluster as the brokers of ``running`` see it, with each one's health; with
    ``cluster`` (a replicated broker's GET /v1/cluster) also leaders, and the
    under-replicated and offline partitions."""
    by_url = {s.url: s for s in states}
    brokers = []
    for b in running.brokers:
        state = by_url.get(b.url, BrokerState(b.url, error="not asked"))
        up = state.error is None
        brokers.append(
            {"id": b.id, "url": b.url, "status": "ok" if up else "down", "epoch": state.epoch, "error": state.error}
        )
    health = partition_health(cluster, (b["id"] for b in brokers if b["status"] == "ok")) if cluster else None
    leaders = {name: running.owners(name) for name in running.topics}
    if health is not None:
        replicas: Counter[int] = Counter()
        for name in running.topics:
            states_of = partition_states(cluster, name) if name in cluster["topics"] else []
            leaders[name] = [s["leader"] if s["leader"] != -1 else None for s in states_of] or leaders[name]
            replicas.update(r for s in states_of for r in s["replicas"])
        led = Counter(leader for owners in leaders.values() for leader in owners)
        for b in brokers:
            b.update(leads=led[b["id"]], replicas=replicas[b["id"]])
    topics = [
        {"name": name, "partitions": running.topics[name].partitions, "owners": leaders[name]}
        for name in sorted(running.topics)
    ]
    view = {"cluster": running.cluster, "epoch": running.epoch, "brokers": brokers, "topics": topics}
    if health is not None:
        view.update(health)
    return view


def render_info(view: dict[str, Any]) -> str:
    brokers = view["brokers"]
    replicated = "under_replicated" in view
    columns = ["id", "url", "status", "epoch"] + (["leads", "replicas"] if replicated else [])
    with_errors = any(b["error"] for b in brokers)
    if with_errors:
        columns.append("error")
    summary = [("name", view["cluster"]), ("epoch", view["epoch"])]
    if replicated:
        summary += [("under-replicated", len(view["under_replicated"])), ("offline", len(view["offline"]))]
    parts = [
        ("CLUSTER", key_values(summary)),
        ("BROKERS", table(columns, ([b[c] for c in columns] for b in brokers))),
        (
            "TOPICS",
            table(["name", "partitions", "owners"], ([t["name"], t["partitions"], t["owners"]] for t in view["topics"]))
            if view["topics"]
            else "",
        ),
    ]
    if replicated:
        columns = ["topic", "partition", "leader", "leader_epoch", "replicas", "isr"]
        for title, key in (("UNDER-REPLICATED PARTITIONS", "under_replicated"), ("OFFLINE PARTITIONS", "offline")):
            rows = ([p[c] for c in columns] for p in view[key])
            parts.append((title, table([c.replace("_", "-") for c in columns], rows) if view[key] else ""))
    return sections(parts)


@click.group()
@global_options
def broker() -> None:
    """Run one broker

    A broker serves the partitions the topology gives it (rendezvous hashing of topic
    and partition over the broker ids) and answers 421 NOT_OWNER for the others.
    """


def _check_listen(value: str | None) -> str | None:
    if value is not None:
        _, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise click.BadParameter(f"{value!r} is not HOST:PORT (e.g. 0.0.0.0:9091)")
    return value


@broker.command("start")
@global_options
@click.option("--id", "broker_id", type=int, required=True, help="This broker's id in cluster.yaml.")
@click.option("--listen", metavar="HOST:PORT", callback=lambda _c, _p, v: _check_listen(v),
              help="Where to bind (default: the host and port of its URL).")
@click.option("--data-dir", metavar="DIR", help="Where to store partitions (default: its data_dir in cluster.yaml).")
@click.option("--log-level", type=click.Choice(LEVELS), default="info", show_default=True)
@click.option("--log-format", type=click.Choice(FORMATS), default="text", show_default=True,
              help="text: key=value lines; json: one JSON object per line.")
@action("start broker")
def start(
    opts: Options, broker_id: int, listen: str | None, data_dir: str | None, log_level: str, log_format: str
) -> None:
    """Run broker --id of cluster.yaml in the foreground until SIGTERM or Ctrl-C

    EXAMPLES

      shoal broker start --id 1

      shoal broker start --id 2 --listen 0.0.0.0:9092 --data-dir /var/lib/shoal --log-format json
    """
    from shoal.broker.main import run

    try:
        run(opts.config, broker_id, listen=listen, data_dir=data_dir, log_level=log_level, log_format=log_format)
    except KeyError:
        raise CliError(f"no broker with id {broker_id} in {opts.config}") from None
