"""``shoal topic create|list|describe|delete|produce|consume``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import sys
from collections.abc import Callable
from typing import Any

import click
import yaml

from shoal.client import AsyncConsumer, AsyncProducer
from shoal.client.errors import ShoalError
from shoal.client.json_records import record_to_json
from shoal.client.names import check_name
from shoal.client.structs import Record, TopicPartition

from shoal.router.cli.base import Options, action, earliest_latest_or_offset, global_options
from shoal.router.cli.edit import add_topic_line, edited, remove_topic_line, set_epoch, write_atomically
from shoal.router.cli.output import CliError, emit, key_values, note, table
from shoal.router.cli.session import ClusterSession, newest, reason
from shoal.router.cli.topology import push, survey
from shoal.router.topology import TopicConfig, Topology, TopologyError, parse_topology


@click.group()
@global_options
def topic() -> None:
    """Create, inspect, delete, write and read topics

    A topic is a named stream of records split into partitions; each partition is an
    ordered log stored by the one broker that owns it. Topics are declared in
    cluster.yaml: `create` and `delete` edit that file (keeping its comments) and
    apply the new epoch to the running brokers.
    """


# --- create and delete: edit cluster.yaml, then apply ---------------------------------


def _parse_configs(pairs: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--topic-config {pair!r}: use key=value, e.g. retention_ms=3600000")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value) if value.strip() else None
    return out


def _resolve(current: Topology, overrides: dict[str, Any]) -> TopicConfig:
    """The config a new topic gets: the file's defaults with ``overrides``, validated against
    the file's brokers (so a replication factor is checked as it will be)."""
    probe = {"brokers": [{"id": b.id, "url": b.url} for b in current.brokers], "defaults": current.defaults.to_dict(),
             "topics": {"new": overrides}}  # fmt: skip
    try:
        return Topology.from_dict(probe, source="--topic-config").topics["new"]
    except TopologyError as exc:
        raise CliError("; ".join(p.replace("topics.new.", "") for p in exc.problems)) from None


@dataclasses.dataclass
class _Outcome:
    epoch: int
    applied: bool
    kept_layout: bool


async def _commit(
    opts: Options, text: str, current: Topology, topics: dict[str, TopicConfig], *,
    edit: Callable[[str], str | None], apply: bool, delete_topics: bool,
) -> _Outcome:  # fmt: skip
    """Write ``topics`` into cluster.yaml at a new epoch and push it to every broker.

    Nothing is written when the running cluster would refuse the change.
    """
    path = opts.config
    if not apply:
        expected = dataclasses.replace(current, epoch=current.epoch + 1, topics=topics)
        new_text, kept = edited(_edit_epoch(edit(text), expected.epoch), expected, path)
        write_atomically(path, new_text)
        return _Outcome(expected.epoch, False, kept)
    async with ClusterSession([b.url for b in current.brokers]) as session:
        states = await session.survey()
        running = newest(states)
        epoch = max([current.epoch, running.epoch] + [s.epoch for s in states if s.epoch is not None]) + 1
        expected = dataclasses.replace(current, epoch=epoch, topics=topics)
        result = await survey(session, expected, delete_topics=delete_topics)
        if result.refusals:
            raise CliError(f"{path} left unchanged; the cluster would refuse it:\n  " + "\n  ".join(result.refusals))
        new_text, kept = edited(_edit_epoch(edit(text), epoch), expected, path)
        write_atomically(path, new_text)
        rows = await push(session, expected, result.plan)
    failed = [f"broker {r['id']} ({r['status']})" for r in rows if not r["status"].startswith("OK")]
    if failed:
        raise CliError(
            f"{path} is at epoch {epoch} but {', '.join(failed)} did not install it; "
            "run `shoal topology apply` once they are back"
        )
    return _Outcome(epoch, True, kept)


def _edit_epoch(text: str | None, epoch: int) -> str | None:
    return None if text is None else set_epoch(text, epoch)


def _report(opts: Options, rows: list[dict[str, Any]], outcome: _Outcome | None) -> None:
    view = {
        "topics": rows,
        "epoch": outcome.epoch if outcome else None,
        "applied": outcome.applied if outcome else False,
    }
    emit(opts.output, view, render_topic_rows)
    if outcome is not None:
        where = "applied to the cluster" if outcome.applied else "not applied (--no-apply)"
        note(f"{opts.config}: epoch {outcome.epoch}, {where}")
        if not outcome.kept_layout:
            note(f"{opts.config} was rewritten from the topology: its layout was not one shoal edits in place")
    if any(row["status"] != "OK" for row in rows):
        raise click.exceptions.Exit(1)


def render_topic_rows(view: dict[str, Any]) -> str:
    return table(
        ["topic", "status"],
        ([r["name"], r["status"] + (f": {r['detail']}" if r["detail"] else "")] for r in view["topics"]),
    )


def _read_config(opts: Options) -> tuple[str, Topology]:
    with open(opts.config, encoding="utf-8") as f:
        text = f.read()
    return text, parse_topology(text, opts.config)


def _row(name: str, status: str = "OK", detail: str = "") -> dict[str, Any]:
    return {"name": name, "status": status, "detail": detail}


_NO_APPLY = click.option("--no-apply", is_flag=True, help="Only edit cluster.yaml; apply it later with `shoal topology apply`.")


@topic.command("create")
@global_options
@click.argument("names", nargs=-1, required=True)
@click.option("-p", "--partitions", type=click.IntRange(min=1), help="Partitions (default: defaults.partitions of cluster.yaml).")
@click.option("-c", "--topic-config", "configs", multiple=True, metavar="KEY=VALUE",
              help="A topic setting (flush, flush_interval_ms, segment_bytes, retention_ms, retention_bytes, "
              "replication_factor, min_insync_replicas, unclean_leader_election); repeatable.")
@_NO_APPLY
@action("create topic")
def create(opts: Options, names: tuple[str, ...], partitions: int | None, configs: tuple[str, ...], no_apply: bool) -> None:
    """Create topics: add them to cluster.yaml and apply the new epoch

    Each topic gets the defaults of cluster.yaml, overridden by -p and -c. The file
    keeps its comments and layout; its epoch goes up by one (above the running
    cluster's). Prints one row per topic; exits 1 if any could not be created.

    EXAMPLES

      shoal topic create payments -p 12

      shoal topic create audit-log -p 1 -c flush=always -c retention_ms=null

      shoal topic create a b c --no-apply
    """
    text, current = _read_config(opts)
    overrides = {"partitions": partitions} if partitions is not None else {}
    overrides.update(_parse_configs(configs))
    config = _resolve(current, overrides)
    rows, topics = [], dict(current.topics)
    for name in dict.fromkeys(names):
        try:
            check_name(name, "topic")
        except ShoalError as exc:
            rows.append(_row(name, "INVALID_REQUEST", exc.detail))
            continue
        if name in topics:
            rows.append(_row(name, "TOPIC_ALREADY_EXISTS", f"{opts.config} already has topic {name}"))
            continue
        topics[name] = config
        rows.append(_row(name))
    outcome = None
    added = [r["name"] for r in rows if r["status"] == "OK"]
    if added:
        def edit(src: str) -> str | None:
            for name in added:
                src = add_topic_line(src, name, overrides) if src is not None else None
            return src

        outcome = asyncio.run(_commit(opts, text, current, topics, edit=edit, apply=not no_apply, delete_topics=False))
    _report(opts, rows, outcome)


@topic.command("delete")
@global_options
@click.argument("names", nargs=-1, required=True)
@_NO_APPLY
@action("delete topic")
def delete(opts: Options, names: tuple[str, ...], no_apply: bool) -> None:
    """Delete topics and all their records

    Removes the topics from cluster.yaml and applies the new epoch: every broker
    deletes the partitions it stored. There is no undo. Prints one row per topic;
    exits 1 if any could not be deleted.

    EXAMPLES

      shoal topic delete scratch

      shoal topic delete a b --no-apply
    """
    text, current = _read_config(opts)
    rows, topics = [], dict(current.topics)
    for name in dict.fromkeys(names):
        if name not in topics:
            rows.append(_row(name, "UNKNOWN_TOPIC", f"{opts.config} has no topic {name}"))
            continue
        del topics[name]
        rows.append(_row(name))
    outcome = None
    removed = [r["name"] for r in rows if r["status"] == "OK"]
    if removed:
        def edit(src: str) -> str | None:
            for name in removed:
                src = remove_topic_line(src, name) if src is not None else None
            return src

        outcome = asyncio.run(_commit(opts, text, current, topics, edit=edit, apply=not no_apply, delete_topics=True))
    _report(opts, rows, outcome)


# --- list and describe: the running cluster ----------------------------------------


def _session(opts: Options) -> ClusterSession:
    return ClusterSession([b.url for b in opts.load().brokers])


@topic.command("list")
@global_options
@action("list topics")
def list_topics(opts: Options) -> None:
    """List the running cluster's topics

    EXAMPLES

      shoal topic list

      shoal topic list -o json
    """
    async def run() -> Topology:
        async with _session(opts) as session:
            return await session.topology()

    running = asyncio.run(run())
    view = [{"name": name, **running.topics[name].to_dict()} for name in sorted(running.topics)]
    emit(opts.output, view, render_list)


def render_list(view: list[dict[str, Any]]) -> str:
    return table(["name", "partitions", "flush", "retention-ms"],
                 ([t["name"], t["partitions"], t["flush"], t["retention_ms"]] for t in view))  # fmt: skip


@topic.command("describe")
@global_options
@click.argument("names", nargs=-1, required=True)
@action("describe topic")
def describe(opts: Options, names: tuple[str, ...]) -> None:
    """Show a topic's config and, per partition, its owner and offsets

    LOG-START-OFFSET is the first offset still stored (retention moves it up);
    HIGH-WATERMARK is the offset the next record will get. In a replicated cluster
    the owner is the LEADER, with its LEADER-EPOCH, the REPLICAS and the in-sync
    replicas (ISR); HIGH-WATERMARK is then the end of what every in-sync replica has.

    EXAMPLES

      shoal topic describe orders

      shoal topic describe orders events -o json
    """
    async def run() -> list[dict[str, Any]]:
        async with _session(opts) as session:
            running = await session.topology()
            return [await describe_view(session, running, name) for name in names]

    emit(opts.output, asyncio.run(run()), render_describe)


async def describe_view(session: ClusterSession, running: Topology, name: str) -> dict[str, Any]:
    config = running.topic(name)
    owners = running.owners(name)
    replication = await _partition_states(session, name)

    async def one(p: int) -> dict[str, Any]:
        row = {"partition": p, "owner": owners[p], "log_start_offset": None, "high_watermark": None, "error": None}
        if replication is not None:
            state = replication[p] or {"leader": None, "leader_epoch": None, "replicas": [], "isr": []}
            row.update(owner=state["leader"], leader_epoch=state["leader_epoch"],
                       replicas=state["replicas"], isr=state["isr"])  # fmt: skip
        try:
            offsets = await session.on_owner(name, p, lambda url: session.api.offsets(url, name, p))
            row.update(log_start_offset=offsets["log_start_offset"], high_watermark=offsets["high_watermark"])
        except ShoalError as exc:
            row["error"] = reason(exc)
        return row

    partitions = await asyncio.gather(*(one(p) for p in range(config.partitions)))
    return {"name": name, "config": config.to_dict(), "partitions": list(partitions)}


async def _partition_states(session: ClusterSession, name: str) -> list[dict[str, Any] | None] | None:
    """Leader, leader epoch, replicas and ISR per partition from the first broker that
    answers GET /v1/cluster; None for a static cluster."""
    for url in session.urls:
        try:
            body = await session.api.cluster(url)
        except ShoalError:
            continue
        return body.get("partitions", {}).get(name) if "partitions" in body else None
    return None


def render_describe(view: list[dict[str, Any]]) -> str:
    out = []
    for t in view:
        replicated = any("isr" in p for p in t["partitions"])
        columns = ["partition", "leader" if replicated else "owner"]
        if replicated:
            columns += ["leader_epoch", "replicas", "isr"]
        columns += ["log_start_offset", "high_watermark"]
        if any(p["error"] for p in t["partitions"]):
            columns.append("error")
        rows = ([_cell(p["owner" if c == "leader" else c]) for c in columns] for p in t["partitions"])
        out.append(
            key_values([("name", t["name"])] + [(k.replace("_", "-"), v) for k, v in t["config"].items()])
            + "\n"
            + table([c.replace("_", "-") for c in columns], rows)
        )
    return "\n".join(out)


def _cell(value: Any) -> Any:
    return ",".join(map(str, value)) if isinstance(value, list) else value


# --- produce and consume: through the client library ---------------------------------


def _headers(pairs: tuple[str, ...]) -> dict[str, str] | None:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CliError(f"--header {pair!r}: use name=value")
        out[name] = value
    return out or None


@topic.command("produce")
@global_options
@click.argument("name")
@click.option("-k", "--key", help="The key of every record (default: none; keyless records go to a sticky partition).")
@click.option("-K", "--key-separator", metavar="SEP", help="Read each line as KEY<SEP>VALUE (e.g. -K ':' or -K '\\t').")
@click.option("-p", "--partition", type=click.IntRange(min=0), help="Send every record to this partition (default: by key).")
@click.option("-H", "--header", "headers", multiple=True, metavar="NAME=VALUE", help="A header on every record; repeatable.")
@action("produce records")
def produce(opts: Options, name: str, key: str | None, key_separator: str | None, partition: int | None,
            headers: tuple[str, ...]) -> None:  # fmt: skip
    """Produce one record per line of stdin

    Lines are sent as they are read and batched by the client library; each record
    is printed once acknowledged as `TOPIC/PARTITION@OFFSET` (with -o json, one
    object per line). Exits 1 if any record failed.

    EXAMPLES

      echo hello | shoal topic produce orders

      printf 'user-1:paid\\nuser-2:shipped\\n' | shoal topic produce orders -K ':'

      shoal topic produce orders -k user-1 -H source=cli < records.txt
    """
    sep = key_separator.encode().decode("unicode_escape").encode() if key_separator else None
    failed = asyncio.run(_produce(opts, name, key, sep, partition, _headers(headers)))
    if failed:
        raise CliError(f"{failed} records were not acknowledged")


async def _produce(opts: Options, name: str, key: str | None, sep: bytes | None, partition: int | None,
                   headers: dict[str, str] | None) -> int:  # fmt: skip
    check_name(name, "topic")
    loop = asyncio.get_running_loop()
    acks: asyncio.Queue = asyncio.Queue()
    failed = 0

    async def report() -> None:
        nonlocal failed
        while (fut := await acks.get()) is not None:
            try:
                meta = await fut
            except ShoalError as exc:
                failed += 1
                note(f"record failed: {exc}")
                continue
            line = {"topic": meta.topic, "partition": meta.partition, "offset": meta.offset}
            click.echo(json.dumps(line) if opts.output == "json" else f"{meta.topic}/{meta.partition}@{meta.offset}")

    async with AsyncProducer([b.url for b in opts.load().brokers], linger_ms=5) as producer:
        printer = asyncio.create_task(report())
        try:
            while line := await loop.run_in_executor(None, sys.stdin.buffer.readline):
                value = line.rstrip(b"\r\n") if line.endswith(b"\n") else line
                record_key: bytes | str | None = key
                if sep is not None:
                    record_key, found, rest = value.partition(sep)
                    if not found:
                        raise CliError(f"line {value[:40]!r} has no key separator {sep!r}")
                    value = rest
                await acks.put(await producer.send(name, value, key=record_key, partition=partition, headers=headers))
        finally:
            await acks.put(None)
            await printer
    return failed


def record_view(record: Record) -> dict[str, Any]:
    """A consumed record as JSON, in the API's record form plus where it came from."""
    return {"topic": record.topic, "partition": record.partition, **record_to_json(record)}


@topic.command("consume")
@global_options
@click.argument("name")
@click.option("-p", "--partition", "partitions", type=click.IntRange(min=0), multiple=True,
              help="Read only this partition; repeatable (default: all).")
@click.option("--offset", "start", default=None, metavar="earliest|latest|N", callback=earliest_latest_or_offset,
              help="Where to start (default: the group's committed offset, else earliest).")
@click.option("-g", "--group", help="Start from this group's committed offsets and commit what was read.")
@click.option("-n", "--num", type=click.IntRange(min=1), help="Stop after this many records (default: no limit).")
@click.option("-e", "--exit-at-end", is_flag=True, help="Stop once caught up with the end of every partition.")
@action("consume records")
def consume(opts: Options, name: str, partitions: tuple[int, ...], start: str | int | None, group: str | None,
            num: int | None, exit_at_end: bool) -> None:  # fmt: skip
    """Print records of a topic, following new ones until Ctrl-C

    Text output is each record's value, one per line; -o json prints one object per
    line with topic, partition, offset, timestamp, key, value and headers (bytes
    that are not UTF-8 as key_b64/value_b64). With -g the group's committed offsets
    are where reading starts, and the position is committed on exit.

    EXAMPLES

      shoal topic consume orders -e

      shoal topic consume orders -p 0 --offset 100 -n 10 -o json

      shoal topic consume orders -g billing
    """
    asyncio.run(_consume(opts, name, partitions, start, group, num, exit_at_end))


async def _consume(opts: Options, name: str, partitions: tuple[int, ...], start: str | int | None, group: str | None,
                   num: int | None, exit_at_end: bool) -> None:  # fmt: skip
    check_name(name, "topic")
    urls = [b.url for b in opts.load().brokers]
    async with ClusterSession(urls) as session:
        running = await session.topology()
        count = running.topic(name).partitions
        wanted = sorted(set(partitions)) or list(range(count))
        for p in wanted:
            running.owner(name, p)  # UnknownPartition before anything starts
        ends = {}
        if exit_at_end:
            for p in wanted:
                offsets = await session.on_owner(name, p, lambda url, p=p: session.api.offsets(url, name, p))
                ends[TopicPartition(name, p)] = offsets["high_watermark"]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reset = start if isinstance(start, str) else "earliest"
    async with AsyncConsumer(bootstrap=urls, group=group, auto_offset_reset=reset, enable_auto_commit=group is not None) as consumer:
        tps = [TopicPartition(name, p) for p in wanted]
        consumer.assign(tps)
        for tp in tps:
            if isinstance(start, int):
                await consumer.seek(tp, start)
            elif start == "earliest":
                await consumer.seek_to_beginning(tp)
            elif start == "latest":
                await consumer.seek_to_end(tp)
        pending = {tp for tp in tps if tp in ends and await consumer.position(tp) < ends[tp]} if exit_at_end else set(tps)
        seen = 0
        while pending and not stop.is_set() and (num is None or seen < num):
            batches = await consumer.getmany(timeout_ms=200, max_records=None if num is None else num - seen)
            for tp, records in batches.items():
                for record in records:
                    click.echo(json.dumps(record_view(record), ensure_ascii=False) if opts.output == "json"
                               else (record.value or b"").decode("utf-8", "backslashreplace"))  # fmt: skip
                seen += len(records)
                if exit_at_end and records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
        if group is not None:
            await consumer.commit()  # every record read was printed (auto-commit would leave the last read out)
