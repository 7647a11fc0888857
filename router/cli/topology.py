"""``shoal topology show|validate|plan|apply``: the topology file and the running cluster."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import click

from shoal.client.errors import ShoalApiError, ShoalError, StaleEpoch
from shoal.client.structs import TopicPartition

from shoal.router.cli.base import Options, action, global_options
from shoal.router.cli.output import CliError, emit, key_values, sections, table
from shoal.router.cli.reassign import open_store, plan_moves, start_moves, status, wait_moves
from shoal.router.cli.session import BrokerState, ClusterSession, newest, reason
from shoal.router.metadata.store import MetadataStore
from shoal.router.plan import Plan, diff
from shoal.router.reassign.progress import human_bytes
from shoal.router.server.params import TopologyChange
from shoal.router.topology import Topology, load_topology

_CHECK_CONCURRENCY = 16


@click.group()
@global_options
def topology() -> None:
    """Inspect cluster.yaml and push it to the running brokers

    cluster.yaml is the source of truth: brokers, topics and their config, and an
    epoch that goes up with every change. Partition owners are not configured: they
    follow from rendezvous hashing over the broker ids, so adding a broker moves only
    the partitions it now wins. `plan` shows what `apply` would do; `apply` pushes the
    new epoch to every broker, without restarts, and refuses a change that would move
    or drop a partition holding data. A replicated cluster (metadata:) moves such
    partitions by replication instead: `apply` starts the moves, `status` follows them.
    """


topology.add_command(status)


@topology.command("show")
@global_options
@action("show topology")
def show(opts: Options) -> None:
    """Show the brokers, topics, their config and owners as cluster.yaml defines them

    EXAMPLES

      shoal topology show

      shoal topology show --config candidate.yaml -o json
    """
    emit(opts.output, show_view(opts.load()), render_show)


def show_view(topo: Topology) -> dict[str, Any]:
    view = topo.to_dict()
    view["brokers"] = [{"id": b.id, "url": b.url, "data_dir": b.data_dir} for b in topo.brokers]
    return view


def render_show(view: dict[str, Any]) -> str:
    topics = view["topics"]
    return sections(
        [
            ("CLUSTER", key_values([("name", view["cluster"]), ("epoch", view["epoch"])])),
            ("BROKERS", table(["id", "url", "data-dir"], ([b["id"], b["url"], b["data_dir"]] for b in view["brokers"]))),
            (
                "TOPICS",
                table(
                    ["name", "partitions", "flush", "retention-ms", "retention-bytes", "segment-bytes", "owners"],
                    (
                        [name, c["partitions"], c["flush"], c["retention_ms"], c["retention_bytes"],
                         c["segment_bytes"], view["owners"][name]]
                        for name, c in topics.items()
                    ),
                )
                if topics
                else "",
            ),
        ]
    )


@topology.command("validate")
@global_options
@click.argument("file", required=False)
@action("validate topology")
def validate(opts: Options, file: str | None) -> None:
    """Check a topology file and report every problem in it at once

    FILE defaults to --config. Exits 1, listing each problem with its line and field,
    when the file is not valid. Nothing is sent to the brokers.

    EXAMPLES

      shoal topology validate

      shoal topology validate candidate.yaml
    """
    path = file or opts.config
    topo = load_topology(path)
    view = {
        "file": path,
        "valid": True,
        "cluster": topo.cluster,
        "epoch": topo.epoch,
        "brokers": len(topo.brokers),
        "topics": len(topo.topics),
        "partitions": sum(c.partitions for c in topo.topics.values()),
    }
    emit(opts.output, view, render_validate)


def render_validate(view: dict[str, Any]) -> str:
    return (
        f"{view['file']} is valid: cluster {view['cluster']}, epoch {view['epoch']}, {view['brokers']} brokers, "
        f"{view['topics']} topics, {view['partitions']} partitions\n"
    )


@dataclass
class Survey:
    """A candidate topology against the running cluster: the plan and its verdict."""

    plan: Plan
    high_watermarks: dict[TopicPartition, int | str]
    refusals: list[str]
    reassignments: list[dict[str, Any]] | None = field(default=None)  # replicated: the replica sets that change

    def view(self) -> dict[str, Any]:
        view = self.plan.to_dict(self.high_watermarks, self.refusals)
        if self.reassignments is not None:
            view["reassignments"] = self.reassignments
        return view


async def survey(
    session: ClusterSession, candidate: Topology, *, delete_topics: bool, store: MetadataStore | None = None
) -> Survey:
    """Plan ``candidate`` against what the cluster runs, and check it against the data.

    The plan starts from the newest topology among brokers still *behind* the
    candidate: a new broker started with the candidate file already reports its epoch,
    but the data sits on the brokers that have not installed it yet. A replicated
    cluster (``store`` given) moves partitions holding data by replication: the plan
    then lists the replica sets that change instead of refusing those moves.
    """
    states = await session.survey()
    known = {s.url for s in states}
    states += await session.survey([b.url for b in newest(states).brokers if b.url not in known])
    behind = [s for s in states if s.topology is not None and s.topology.epoch < candidate.epoch]
    base = newest(behind or states)
    plan = diff(base, candidate)
    if store is not None:
        plan = dataclasses.replace(plan, moves=[m for m in plan.moves if m.target is None])
    checks = plan.checks(delete_topics=delete_topics)
    high_watermarks = await _high_watermarks(session, base, checks)
    refusals = plan.refusals(high_watermarks, delete_topics=delete_topics)
    if behind:  # else plan.refusals has compared the epochs already
        refusals += _ahead_or_different(candidate, states)
    refusals += _unreachable(candidate, states) + _removed_but_running(plan, states)
    moves = None
    if store is not None:
        moves, refused = await plan_moves(session, store, candidate)
        refusals += refused
    return Survey(plan, high_watermarks, refusals, moves)


def _ahead_or_different(candidate: Topology, states: list[BrokerState]) -> list[str]:
    """Brokers whose topology is newer than the candidate, or another one of its epoch."""
    out = []
    body = candidate.to_dict()
    for s in states:
        topo = s.topology
        if topo is None or topo.epoch < candidate.epoch:
            continue
        if topo.epoch > candidate.epoch or topo.to_dict() != body:
            newer = "newer than" if topo.epoch > candidate.epoch else "another topology than"
            out.append(
                f"broker {s.broker_id} at {s.url} runs epoch {topo.epoch}, {newer} {candidate.source}: "
                f"set epoch: {topo.epoch + 1} in {candidate.source}"
            )
    return out


async def _high_watermarks(
    session: ClusterSession, running: Topology, checks: dict[TopicPartition, int]
) -> dict[TopicPartition, int | str]:
    limit = asyncio.Semaphore(_CHECK_CONCURRENCY)

    async def one(tp: TopicPartition, owner_id: int) -> int | str:
        async with limit:
            try:
                body = await session.api.offsets(running.broker(owner_id).url, tp.topic, tp.partition)
            except ShoalError as exc:
                return reason(exc)
            return int(body["high_watermark"])

    results = await asyncio.gather(*(one(tp, owner) for tp, owner in checks.items()))
    return dict(zip(checks, results))


def _unreachable(candidate: Topology, states: list[BrokerState]) -> list[str]:
    errors = {s.url: s.error for s in states}
    return [
        f"broker {b.id} at {b.url} does not answer ({errors[b.url]}): start it before applying"
        for b in candidate.brokers
        if errors.get(b.url)
    ]


def _removed_but_running(plan: Plan, states: list[BrokerState]) -> list[str]:
    alive = {s.url for s in states if s.error is None}
    removed = [b for b in plan.old.brokers if b.id not in {n.id for n in plan.new.brokers}]
    return [f"broker {b.id} is removed but still running at {b.url}: stop it first" for b in removed if b.url in alive]


async def push(session: ClusterSession, candidate: Topology, plan: Plan) -> list[dict[str, Any]]:
    """``PUT /v1/cluster`` to every broker of ``candidate``; one status row each.

    The topics ``plan`` deletes go along as ``delete_topics``: a broker deletes a
    topic's data only when the request names it.
    """
    body = TopologyChange(candidate, tuple(plan.deleted_topics)).to_dict()

    async def one(broker_id: int, url: str) -> dict[str, Any]:
        try:
            await session.api.install(url, body)
            status = "OK"
        except StaleEpoch as exc:
            same = exc.epoch == candidate.epoch
            status = f"OK (already at epoch {exc.epoch})" if same else f"STALE_EPOCH: {exc.detail}"
        except ShoalApiError as exc:
            status = f"{exc.code or exc.http_status}: {exc.detail}"
        except ShoalError as exc:
            status = f"UNREACHABLE: {reason(exc)}"
        return {"id": broker_id, "url": url, "status": status}

    return list(await asyncio.gather(*(one(b.id, b.url) for b in candidate.brokers)))


def bootstrap_urls(opts: Options, candidate: Topology) -> list[str]:
    """The candidate's broker URLs, then those of --config when it is another file."""
    urls = [b.url for b in candidate.brokers]
    if candidate.source != opts.config:
        try:
            urls += [b.url for b in opts.load().brokers]
        except (OSError, ValueError):
            pass  # --config is only a second chance to find the running cluster
    return urls



@topology.command("plan")
@global_options
@click.argument("file", required=False)
@click.option("--delete-topics", is_flag=True, help="Treat deleting topics that hold data as allowed.")
@action("plan topology")
def plan_command(opts: Options, file: str | None, delete_topics: bool) -> None:
    """Show what applying a topology file would change in the running cluster

    Lists added, removed and changed brokers and topics, and every partition whose
    owner would change, from which broker to which, with its high watermark on the
    current owner. Changes that `apply` would refuse are listed under REFUSED.
    Nothing is changed. FILE defaults to --config.

    In a replicated cluster (metadata: in the file) partitions move by replication:
    REASSIGNMENTS lists each partition whose replica set changes, before and after,
    the bytes the new replicas must copy, and the leader move. A broker removed from
    the file must not hold replicas any more (shoal broker drain --id N first).

    EXAMPLES

      shoal topology plan

      shoal topology plan with-broker-4.yaml
    """
    candidate = load_topology(file or opts.config)
    result = asyncio.run(_survey(bootstrap_urls(opts, candidate), candidate, delete_topics))
    emit(opts.output, result.view(), render_plan)


async def _survey(urls: list[str], candidate: Topology, delete_topics: bool) -> Survey:
    async with ClusterSession(urls) as session, open_store(candidate) as store:
        return await survey(session, candidate, delete_topics=delete_topics, store=store)


def render_moves(rows: list[dict[str, Any]]) -> str:
    def ids(xs: list[int]) -> str:
        return ",".join(map(str, xs)) or "-"

    total = sum(r["bytes_to_copy"] or 0 for r in rows)
    leaders = sum(1 for r in rows if r["leader_before"] != r["leader_after"])
    return table(
        ["partition", "replicas-before", "replicas-after", "adding", "removing", "copy", "leader"],
        ([f"{r['topic']}/{r['partition']}", ids(r["before"]), ids(r["after"]), ids(r["adding"]), ids(r["removing"]),
          human_bytes(r["bytes_to_copy"]),
          f"{r['leader_before']} -> {r['leader_after']}" if r["leader_before"] != r["leader_after"] else r["leader_before"]]
         for r in rows),
    ) + f"{len(rows)} partitions move, {human_bytes(total)} to copy, {leaders} leader changes\n"


def render_plan(view: dict[str, Any]) -> str:
    head = f"cluster {view['cluster']}: epoch {view['from_epoch']} -> {view['to_epoch']}\n"
    changes = "".join(
        f"{c['op']} {c['kind']} {c['name']}" + (f": {c['detail']}" if c["detail"] else "") + "\n"
        for c in view["changes"]
    )
    moves = table(
        ["partition", "from", "to", "high-watermark"],
        ([f"{m['topic']}/{m['partition']}", m["from"], m["to"] if m["to"] is not None else "(removed)",
          m["high_watermark"]] for m in view["moves"]),
    ) if view["moves"] else ""
    refused = "".join(f"{r}\n" for r in view["refusals"])
    warnings = "".join(f"{w}\n" for w in view.get("warnings", []))
    reassignments = render_moves(view["reassignments"]) if view.get("reassignments") else ""
    parts = [
        ("CHANGES", changes or "no changes\n"), ("MOVES", moves), ("REASSIGNMENTS", reassignments),
        ("WARNINGS", warnings), ("REFUSED", refused),
    ]
    return head + "\n" + "\n".join(f"{title}\n{body}" for title, body in parts if body)


@topology.command("apply")
@global_options
@click.argument("file", required=False)
@click.option("--delete-topics", is_flag=True, help="Allow deleting topics that hold data (their data is lost).")
@click.option("--wait", is_flag=True, help="Replicated: follow the moves until every partition is in place.")
@click.option("--throttle", type=click.IntRange(0), metavar="BYTES_PER_S",
              help="Replicated: the bytes/s each leader may send to replicas being added (0: no limit).")
@action("apply topology")
def apply(opts: Options, file: str | None, delete_topics: bool, wait: bool, throttle: int | None) -> None:
    """Push a topology file's new epoch to every broker, without restarts

    First plans the change (see `shoal topology plan`); refuses, naming them, changes
    that would move or drop partitions holding data, a removed broker that is still
    running, and an epoch that is not newer than the running one. Then installs the
    topology on every broker with PUT /v1/cluster and prints one row per broker.
    Start a new broker (with the new file) before applying a topology that adds it.
    FILE defaults to --config.

    In a replicated cluster, apply then writes each moving partition's target replicas
    to etcd and the partitions' leaders carry the moves out: new replicas copy the log,
    join the ISR, leadership is handed over where the preferred leader changes, old
    replicas are dropped and delete their copy. Applying again resumes an interrupted
    apply. --wait follows the moves until they are done (see shoal topology status).

    EXAMPLES

      shoal topology apply

      shoal topology apply with-broker-4.yaml --wait

      shoal topology apply --throttle 50000000
    """
    candidate = load_topology(file or opts.config)
    view = asyncio.run(_apply(bootstrap_urls(opts, candidate), candidate, delete_topics, wait, opts.output, throttle))
    emit(opts.output, view, render_apply)
    if any(not row["status"].startswith("OK") for row in view["brokers"]):
        raise CliError("some brokers did not install the topology; fix them and apply again")


async def _apply(
    urls: list[str], candidate: Topology, delete_topics: bool, wait: bool, output: str, throttle: int | None
) -> dict[str, Any]:
    async with ClusterSession(urls) as session, open_store(candidate) as store:
        result = await survey(session, candidate, delete_topics=delete_topics, store=store)
        if result.refusals:
            raise CliError("refused:\n  " + "\n  ".join(result.refusals))
        view = result.view()
        view["brokers"] = await push(session, candidate, result.plan)
        if store is not None and all(row["status"].startswith("OK") for row in view["brokers"]):
            if throttle is not None:
                await store.set_throttle(throttle or None)
            view["started"] = await start_moves(store, candidate)
            if wait:
                await wait_moves(session, store, candidate, output)
    return view


def render_apply(view: dict[str, Any]) -> str:
    out = render_plan(view) + "\nBROKERS\n" + table(
        ["id", "url", "status"], ([b["id"], b["url"], b["status"]] for b in view["brokers"])
    )
    if "started" in view:
        out += f"\nstarted moving {view['started']} partitions (shoal topology status follows them)\n"
    return out
