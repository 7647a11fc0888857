"""HTTP handlers of consumer group membership, served by the group's coordinator.

Partitions travel as a map of topic -> partition numbers: ``{"orders": [0, 3]}``.
See docs/protocol.md "Consumer groups" for the protocol.
"""

from __future__ import annotations

from aiohttp import web

from shoal.broker.coordinator import DEFAULT_SESSION_TIMEOUT_MS, GroupCoordinator
from shoal.broker.state import BROKER
from shoal.client.errors import InvalidRequest
from shoal.client.names import check_name
from shoal.client.structs import TopicPartition
from shoal.router.server.params import json_object

_MEMBER_ID_MAX = 128


def parse_partition_map(value, field: str) -> list[TopicPartition]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field} must be an object of topic -> [partition, ...]", field=field)
    out = []
    for topic, parts in value.items():
        check_name(topic, f"{field}.topic")
        if not isinstance(parts, list) or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in parts):
            raise InvalidRequest(f"{field}.{topic} must be a list of partition numbers", field=field)
        out.extend(TopicPartition(topic, p) for p in parts)
    return out


def _optional_str(body: dict, name: str) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not 0 < len(value) <= _MEMBER_ID_MAX):
        raise InvalidRequest(f"{name} must be a string of 1-{_MEMBER_ID_MAX} characters", field=name)
    return value


def _optional_int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidRequest(f"{name} must be an integer", field=name)
    return value


def _replicated(request: web.Request):
    broker = request.app[BROKER]
    if broker.groups is None:
        raise InvalidRequest("this cluster is not replicated (no metadata: section): commit at the partition's owner")
    return broker


def _group(request: web.Request) -> tuple[str, GroupCoordinator]:
    """The group named in the path and this broker's coordinator of it (NOT_OWNER naming
    the coordinator elsewhere; LEADER_NOT_AVAILABLE while a replicated one loads)."""
    group = check_name(request.match_info["group"], "group")
    return group, request.app[BROKER].group_coordinator(group)


async def join(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    group, coordinator = _group(request)
    body = await json_object(request)
    topics = body.get("topics")
    if not isinstance(topics, list) or not topics:
        raise InvalidRequest("topics must be a non-empty list of topic names", field="topics")
    for topic in topics:
        check_name(topic, "topics")
        broker.topology.topic(topic)  # UNKNOWN_TOPIC for a topic that does not exist
    answer = coordinator.join(
        group,
        topics,
        member_id=_optional_str(body, "member_id"),
        instance_id=_optional_str(body, "group_instance_id"),
        assignor=body.get("assignor") or "sticky",
        session_timeout_ms=_optional_int(body, "session_timeout_ms") or DEFAULT_SESSION_TIMEOUT_MS,
    )
    return web.json_response(answer)


async def heartbeat(request: web.Request) -> web.Response:
    group, coordinator = _group(request)
    body = await json_object(request)
    owned = parse_partition_map(body.get("owned"), "owned")
    return web.json_response(coordinator.heartbeat(group, request.match_info["member"], owned))


async def leave(request: web.Request) -> web.Response:
    group, coordinator = _group(request)
    coordinator.leave(group, request.match_info["member"])
    return web.json_response({"group": group, "member_id": request.match_info["member"], "left": True})


async def members(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    group, coordinator = _group(request)
    return web.json_response({**coordinator.describe(group), "coordinator": broker.broker_id})


async def fence(request: web.Request) -> web.Response:
    """Asked by partition owners before they store a group's commit."""
    group, coordinator = _group(request)
    body = await json_object(request)
    tps = parse_partition_map(body.get("partitions"), "partitions")
    coordinator.fence(group, _optional_str(body, "member_id"), _optional_int(body, "generation"), tps)
    return web.json_response({"group": group, "ok": True})


async def commit_offsets(request: web.Request) -> web.Response:
    """A replicated cluster's commit, forwarded by a partition leader to the coordinator:
    fenced, appended to __consumer_offsets, answered once on every in-sync replica."""
    broker = _replicated(request)
    group, _ = _group(request)
    body = await json_object(request)
    offsets = body.get("offsets")
    if not isinstance(offsets, list) or not offsets or not all(isinstance(o, dict) for o in offsets):
        raise InvalidRequest("offsets must be a non-empty list of {topic, partition, offset, metadata}", field="offsets")
    entries = []
    for o in offsets:
        topic, partition, offset, metadata = o.get("topic"), o.get("partition"), o.get("offset"), o.get("metadata") or ""
        check_name(topic, "offsets.topic")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (partition, offset)):
            raise InvalidRequest("offsets[].partition and offsets[].offset must be non-negative integers", field="offsets")
        if not isinstance(metadata, str):
            raise InvalidRequest("offsets[].metadata must be a string", field="offsets")
        entries.append((topic, partition, offset, metadata))
    await broker.groups.commit(group, _optional_str(body, "member_id"), _optional_int(body, "generation"), entries)
    return web.json_response({"group": group, "committed": len(entries)})


async def get_offsets(request: web.Request) -> web.Response:
    """Every committed offset of a group, from its replicated coordinator."""
    broker = _replicated(request)
    group, _ = _group(request)
    rows = [{"topic": tp.topic, "partition": tp.partition, "offset": c.offset, "metadata": c.metadata}
            for tp, c in sorted(broker.groups.offsets(group).items())]
    return web.json_response({"group": group, "coordinator": broker.broker_id, "offsets": rows})


def add_group_routes(app: web.Application) -> None:
    app.router.add_post("/v1/groups/{group}/members", join)
    app.router.add_get("/v1/groups/{group}/members", members)
    app.router.add_post("/v1/groups/{group}/members/{member}/heartbeat", heartbeat)
    app.router.add_delete("/v1/groups/{group}/members/{member}", leave)
    app.router.add_post("/v1/groups/{group}/fence", fence)
    app.router.add_post("/v1/groups/{group}/offsets", commit_offsets)
    app.router.add_get("/v1/groups/{group}/offsets", get_offsets)
