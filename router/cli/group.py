"""``shoal group list|describe|seek``: consumer groups and their committed offsets."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import click

from shoal.client.errors import ShoalError
from shoal.client.names import check_name
from shoal.client.structs import OffsetAndMetadata, TopicPartition

from shoal.router.cli.base import Options, action, earliest_latest_or_offset, global_options
from shoal.router.cli.output import CliError, emit, key_values, note, sections, table
from shoal.router.cli.session import ClusterSession, reason
from shoal.router.hashing import group_coordinator
from shoal.router.topology import Topology


@click.group()
@global_options
def group() -> None:
    """See and move consumer groups' members and committed offsets

    A group is a name under which consumers commit offsets: for each partition, the
    next offset the group should read. Each partition's owner stores the group's
    offsets for it; a consumer of the group that (re)starts resumes there. Lag is
    the high watermark minus the committed offset. Consumers that subscribe share
    the group's partitions; the group's coordinator (a broker chosen by hashing the
    group name) keeps its members and their assignment.
    """


def _session(opts: Options) -> ClusterSession:
    return ClusterSession([b.url for b in opts.load().brokers])


async def _collect(session: ClusterSession, running: Topology, fetch) -> list[dict[str, Any]]:
    """Group rows from every broker, keeping each partition's row from its owner."""
    answers = await asyncio.gather(*(fetch(b.url) for b in running.brokers), return_exceptions=True)
    rows = []
    for b, answer in zip(running.brokers, answers):
        if isinstance(answer, ShoalError):
            note(f"broker {b.id} at {b.url} did not answer ({reason(answer)}); its partitions are missing")
            continue
        if isinstance(answer, BaseException):
            raise answer
        for view in answer:
            for row in view["partitions"]:
                topic = running.topics.get(row["topic"])
                if topic and row["partition"] < topic.partitions and running.owners(row["topic"])[row["partition"]] == b.id:
                    rows.append({"group": view["group"], **row})
    return sorted(rows, key=lambda r: (r["group"], r["topic"], r["partition"]))


@group.command("list")
@global_options
@action("list groups")
def list_groups(opts: Options) -> None:
    """List the groups that have committed offsets, with their total lag

    EXAMPLES

      shoal group list
    """
    async def run() -> list[dict[str, Any]]:
        async with _session(opts) as session:
            running = await session.topology()
            return await _collect(session, running, session.api.groups)

    emit(opts.output, list_view(asyncio.run(run())), render_list)


def list_view(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        g = groups.setdefault(row["group"], {"group": row["group"], "topics": [], "partitions": 0, "lag": 0})
        if row["topic"] not in g["topics"]:
            g["topics"].append(row["topic"])
        g["partitions"] += 1
        g["lag"] += row["lag"] or 0
    return list(groups.values())


def render_list(view: list[dict[str, Any]]) -> str:
    return table(["group", "topics", "partitions", "lag"], ([g["group"], g["topics"], g["partitions"], g["lag"]] for g in view))


@group.command("describe")
@global_options
@click.argument("name")
@action("describe group")
def describe(opts: Options, name: str) -> None:
    """Show a group's state, members, and per partition the committed offset, log end and lag

    EXAMPLES

      shoal group describe billing

      shoal group describe billing -o json | jq .total_lag
    """
    check_name(name, "group")

    async def run() -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        async with _session(opts) as session:
            running = await session.topology()
            rows = await _collect(session, running, lambda url: _one(session, url, name))
            return rows, await _members(session, running, name)

    rows, members = asyncio.run(run())
    view = describe_view(name, rows, members)
    if not view["partitions"] and not view["members"]:
        raise CliError(f"group {name} has no members and no committed offsets")
    emit(opts.output, view, render_describe)


async def _members(session: ClusterSession, running: Topology, name: str) -> dict[str, Any] | None:
    """The coordinator's view of the group, None (with a note) when it does not answer."""
    coordinator = running.broker(group_coordinator(name, running.broker_ids))
    try:
        return await session.api.members(coordinator.url, name)
    except ShoalError as exc:
        note(f"coordinator broker {coordinator.id} at {coordinator.url} did not answer ({reason(exc)}); members unknown")
        return None


async def _one(session: ClusterSession, url: str, name: str) -> list[dict[str, Any]]:
    return [await session.api.group(url, name)]


def describe_view(name: str, rows: list[dict[str, Any]], members: dict[str, Any] | None = None) -> dict[str, Any]:
    holder = {}
    for m in (members or {}).get("members", []):
        for topic, parts in m["assignment"].items():
            holder.update({(topic, p): m["member_id"] for p in parts})
    partitions = [
        {
            "topic": r["topic"],
            "partition": r["partition"],
            "current_offset": r["offset"],
            "log_end_offset": r["high_watermark"],
            "lag": r["lag"],
            "member": holder.get((r["topic"], r["partition"]), ""),
            "metadata": r.get("metadata") or "",
        }
        for r in rows
    ]
    return {
        "group": name,
        "state": members["state"] if members else "unknown",
        "generation": members["generation"] if members else None,
        "coordinator": members.get("coordinator") if members else None,
        "total_lag": sum(p["lag"] or 0 for p in partitions),
        "members": [
            {
                "member_id": m["member_id"],
                "group_instance_id": m.get("group_instance_id"),
                "partitions": ", ".join(f"{t}:{','.join(map(str, ps))}" for t, ps in sorted(m["assignment"].items())),
                "last_heartbeat_ms_ago": m.get("last_heartbeat_ms_ago"),
            }
            for m in (members or {}).get("members", [])
        ],
        "partitions": partitions,
    }


def render_describe(view: dict[str, Any]) -> str:
    summary = [("group", view["group"]), ("state", view["state"])]
    if view["generation"] is not None:
        summary += [("generation", view["generation"]), ("coordinator", view["coordinator"])]
    summary.append(("total-lag", view["total_lag"]))
    member_columns = ["member_id", "partitions", "last_heartbeat_ms_ago"]
    if any(m["group_instance_id"] for m in view["members"]):
        member_columns.insert(1, "group_instance_id")
    columns = ["topic", "partition", "current_offset", "log_end_offset", "lag"]
    if any(p["member"] for p in view["partitions"]):
        columns.append("member")
    if any(p["metadata"] for p in view["partitions"]):
        columns.append("metadata")
    parts = [
        ("MEMBERS", view["members"] and table(
            [c.replace("_", "-").replace("-ms-ago", "") if c.startswith("last") else c.replace("_", "-") for c in member_columns],
            ([m[c] for c in member_columns] for m in view["members"]))),
        ("PARTITIONS", view["partitions"] and table(
            [c.replace("_", "-") for c in columns], ([p[c] for c in columns] for p in view["partitions"]))),
    ]
    return key_values(summary) + "\n" + sections(parts)


# --- seek ------------------------------------------------------------------------------


def _parse_datetime(_ctx: click.Context, _param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use ISO 8601, e.g. 2024-05-01T12:00:00Z") from None
    return int(moment.astimezone().timestamp() * 1000)


def _parse_topics(running: Topology, specs: tuple[str, ...]) -> list[TopicPartition]:
    out = []
    for spec in specs:
        name, _, parts = spec.partition(":")
        count = running.topic(name).partitions
        if not parts:
            out += [TopicPartition(name, p) for p in range(count)]
            continue
        for text in parts.split(","):
            if not text.strip().isdigit():
                raise CliError(f"--topic {spec!r}: partitions are numbers, as in orders:0,1")
            running.owner(name, int(text))  # UnknownPartition when out of range
            out.append(TopicPartition(name, int(text)))
    return list(dict.fromkeys(out))


def new_offset(how: str, arg: int | None, current: int | None, offsets: dict[str, Any]) -> int:
    """Where ``--to``/``--to-timestamp``/``--shift-by`` puts a partition, clamped to the log.

    Raises:
        CliError: ``--shift-by`` on a partition with no committed offset.
    """
    start, end = offsets["log_start_offset"], offsets["high_watermark"]
    if how == "earliest":
        target = start
    elif how == "latest":
        target = end
    elif how == "offset":
        target = arg
    elif how == "timestamp":
        target = offsets.get("offset")
        target = end if target is None else target  # nothing that recent: the end, as Kafka does
    else:
        if current is None:
            raise CliError("no committed offset to shift")
        target = current + arg
    return min(max(target, start), end)


@group.command("seek")
@global_options
@click.argument("name")
@click.option("--to", "to", callback=earliest_latest_or_offset, metavar="earliest|latest|OFFSET",
              help="Move to the log start, the log end, or an offset (clamped to the log).")
@click.option("--to-timestamp", type=click.IntRange(min=0), metavar="MS",
              help="Move to the first record at or after this time (ms since the epoch).")
@click.option("--to-datetime", callback=_parse_datetime, metavar="ISO",
              help="As --to-timestamp, from an ISO 8601 time (local time when no zone is given).")
@click.option("--shift-by", type=int, metavar="N", help="Move each committed offset by N (negative: back).")
@click.option("-t", "--topic", "topics", multiple=True, metavar="TOPIC[:P,P...]",
              help="Partitions to move; repeatable (default: every partition the group has committed).")
@click.option("--execute", is_flag=True, help="Commit the new offsets (default: only print the plan).")
@action("seek group")
def seek(opts: Options, name: str, to: str | int | None, to_timestamp: int | None, to_datetime: int | None,
         shift_by: int | None, topics: tuple[str, ...], execute: bool) -> None:  # fmt: skip
    """Move a group's committed offsets: print the plan, and commit it with --execute

    Exactly one of --to, --to-timestamp, --to-datetime and --shift-by says where to.
    New offsets are clamped to what the log holds (log start .. high watermark). Stop
    the group's consumers first: a running consumer commits its own position over
    the new one.

    EXAMPLES

      shoal group seek billing --to earliest

      shoal group seek billing --to-datetime 2024-05-01T12:00:00Z -t orders --execute

      shoal group seek billing --shift-by -100 -t orders:0,1 --execute
    """
    check_name(name, "group")
    chosen = [(how, arg) for how, arg, given in (
        ("earliest" if to == "earliest" else "latest" if to == "latest" else "offset", to, to is not None),
        ("timestamp", to_timestamp, to_timestamp is not None),
        ("timestamp", to_datetime, to_datetime is not None),
        ("shift", shift_by, shift_by is not None),
    ) if given]  # fmt: skip
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --to, --to-timestamp, --to-datetime, --shift-by")
    how, arg = chosen[0]
    view = asyncio.run(_seek(opts, name, how, arg, topics, execute))
    emit(opts.output, view, render_seek)
    if not execute:
        note("dry run: nothing changed; add --execute to commit these offsets")
    if any(p["status"] not in ("OK", "PLANNED") for p in view["partitions"]):
        raise click.exceptions.Exit(1)


async def _seek(opts: Options, name: str, how: str, arg: Any, topics: tuple[str, ...], execute: bool) -> dict[str, Any]:
    async with _session(opts) as session:
        running = await session.topology()
        members = await _members(session, running, name)
        if execute and (members is None or members["members"]):
            live = "its coordinator does not answer" if members is None else f"it has {len(members['members'])} live member(s)"
            raise CliError(
                f"group {name} cannot be moved while {live}: stop its consumers first "
                "(or wait for their session timeout); without --execute the plan is still shown"
            )
        if topics:
            tps = _parse_topics(running, topics)
        else:
            rows = await _collect(session, running, lambda url: _one(session, url, name))
            tps = [TopicPartition(r["topic"], r["partition"]) for r in rows]
        if not tps:
            raise CliError(f"group {name} has no committed offsets; name the partitions with --topic")

        async def one(tp: TopicPartition) -> dict[str, Any]:
            row: dict[str, Any] = {"topic": tp.topic, "partition": tp.partition, "current_offset": None,
                                   "new_offset": None, "status": "PLANNED"}  # fmt: skip
            timestamp = arg if how == "timestamp" else None
            try:
                committed = await session.on_owner(
                    tp.topic, tp.partition, lambda url: session.api.committed(url, name, tp.topic, tp.partition)
                )
                offsets = await session.on_owner(
                    tp.topic, tp.partition,
                    lambda url: session.api.offsets(url, tp.topic, tp.partition, timestamp=timestamp),
                )  # fmt: skip
                row["current_offset"] = committed.offset if committed else None
                row["new_offset"] = new_offset(how, arg, row["current_offset"], offsets)
                if execute:
                    meta = OffsetAndMetadata(row["new_offset"], committed.metadata if committed else "")
                    await session.on_owner(
                        tp.topic, tp.partition, lambda url: session.api.commit(url, name, tp.topic, tp.partition, meta)
                    )
                    row["status"] = "OK"
            except ShoalError as exc:
                row["status"] = f"{getattr(exc, 'code', None) or 'ERROR'}: {reason(exc)}"
            except CliError as exc:
                row["status"] = f"ERROR: {exc}"
            return row

        partitions = await asyncio.gather(*(one(tp) for tp in tps))
    return {"group": name, "executed": execute, "partitions": list(partitions)}


def render_seek(view: dict[str, Any]) -> str:
    columns = ["topic", "partition", "current_offset", "new_offset"]
    if view["executed"] or any(p["status"] != "PLANNED" for p in view["partitions"]):
        columns.append("status")
    return table([c.replace("_", "-") for c in columns], ([p[c] for c in columns] for p in view["partitions"]))
