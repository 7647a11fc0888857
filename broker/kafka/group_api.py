"""Group and offset APIs: FindCoordinator, Join/Sync/Heartbeat/LeaveGroup, OffsetCommit,
OffsetFetch, DescribeGroups, ListGroups; and CreateTopics/DeleteTopics, refused.

A group's coordinator is the broker ``Broker.coordinator_of`` names; other brokers
answer NOT_COORDINATOR. Committed offsets are the ones the HTTP API reads and writes,
so both protocols see one namespace of ``(group, topic, partition)``. In a replicated
cluster the coordinator (the leader of the group's ``__consumer_offsets`` partition)
appends them there through ``Broker.commit_offsets`` and reads them with
``Broker.committed``; while it loads that partition it answers
COORDINATOR_LOAD_IN_PROGRESS. In a static cluster it stores those of partitions it
owns and hands the others to their owners over HTTP (after checking the member and
generation itself). A partition or coordinator that cannot answer right now (an
election under way) answers COORDINATOR_NOT_AVAILABLE, which Kafka clients retry, as
they would a coordinator moving.

Topics are declared in cluster.yaml and changed with ``shoal topology apply``; the
Kafka admin APIs that would change them answer POLICY_VIOLATION.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp
from kio.schema.errors import ErrorCode

from shoal.broker.kafka.codec import millis
from shoal.broker.kafka.errors import KafkaError, kafka_code
from shoal.broker.kafka.metadata import node, partition_state
from shoal.broker.kafka.sasl import is_admin, may
from shoal.client.errors import BrokerUnavailable, LeaderNotAvailable, NotOwner, ShoalError
from shoal.client.names import is_valid_name
from shoal.client.structs import TopicPartition

if TYPE_CHECKING:
    from shoal.broker.kafka.listener import Connection

log = logging.getLogger(__name__)

(OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR, JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP,
 DESCRIBE_GROUPS, LIST_GROUPS, CREATE_TOPICS, DELETE_TOPICS) = 8, 9, 10, 11, 12, 13, 14, 15, 16, 19, 20
_NO_TOPIC_CHANGES = "topics are declared in cluster.yaml and changed with `shoal topology apply`"


def _coordinator_error(conn: Connection, group_id: str) -> ErrorCode | None:
    """GROUP_AUTHORIZATION_FAILED unless the principal may use ``group_id``, then
    NOT_COORDINATOR unless this broker coordinates it (replicated: or
    COORDINATOR_LOAD_IN_PROGRESS / COORDINATOR_NOT_AVAILABLE, see ``_coordinator_code``)."""
    if not may(conn, group_id, "groups"):
        return ErrorCode.group_authorization_failed
    if not is_valid_name(group_id):
        return ErrorCode.invalid_group_id
    try:
        conn.broker.check_coordinator(group_id)
    except (NotOwner, LeaderNotAvailable) as exc:
        return _coordinator_code(conn, group_id, exc)
    return None


async def handle_find_coordinator(conn: Connection, request: Any, version: int) -> dict:
    keys = list(getattr(request, "coordinator_keys", ()) or ()) or [request.key]
    topology = conn.broker.topology
    results = []
    for key in keys:
        out = {"key": key, "error_code": 0, "error_message": None, "node_id": -1, "host": "", "port": -1}
        if getattr(request, "key_type", 0) != 0:
            out["error_code"] = ErrorCode.invalid_request  # transaction coordinators: no transactions
        elif not may(conn, key, "groups"):
            out["error_code"] = ErrorCode.group_authorization_failed
        elif not is_valid_name(key):
            out["error_code"] = ErrorCode.invalid_group_id
        else:
            found = node(topology, conn.broker.coordinator_of(key).id)
            if found is None:
                out["error_code"] = ErrorCode.coordinator_not_available
            else:
                out.update(node_id=found["node_id"], host=found["host"], port=found["port"])
        results.append(out)
    return {"throttle_time": 0, **results[0], "coordinators": results}


async def handle_join_group(conn: Connection, request: Any, version: int) -> dict:
    failed = {"throttle_time": 0, "generation_id": -1, "protocol_name": None, "leader": "", "member_id": request.member_id, "members": []}
    if (code := _coordinator_error(conn, request.group_id)) is not None:
        return {**failed, "error_code": code}
    session_ms = millis(request.session_timeout)
    rebalance_ms = millis(getattr(request, "rebalance_timeout", request.session_timeout))
    if rebalance_ms < 0:
        rebalance_ms = session_ms
    try:
        result = await conn.listener.groups.join(
            request.group_id, request.member_id, protocol_type=request.protocol_type,
            protocols=[(p.name, p.metadata) for p in request.protocols],
            session_timeout_ms=session_ms, rebalance_timeout_ms=rebalance_ms,
            client_id=conn.client_id or "", client_host=conn.peer,
            instance_id=getattr(request, "group_instance_id", None),
        )
    except KafkaError as exc:
        return {**failed, "error_code": exc.code}
    return {"throttle_time": 0, "error_code": 0, **result}


async def handle_sync_group(conn: Connection, request: Any, version: int) -> dict:
    if (code := _coordinator_error(conn, request.group_id)) is not None:
        return {"throttle_time": 0, "error_code": code, "assignment": b""}
    try:
        assignment = await conn.listener.groups.sync(
            request.group_id, request.member_id, request.generation_id,
            {a.member_id: a.assignment for a in request.assignments},
        )
    except KafkaError as exc:
        return {"throttle_time": 0, "error_code": exc.code, "assignment": b""}
    group = conn.listener.groups.groups[request.group_id]
    return {"throttle_time": 0, "error_code": 0, "assignment": assignment,
            "protocol_type": group.protocol_type, "protocol_name": group.protocol}


async def handle_heartbeat(conn: Connection, request: Any, version: int) -> dict:
    if (code := _coordinator_error(conn, request.group_id)) is not None:
        return {"throttle_time": 0, "error_code": code}
    try:
        conn.listener.groups.heartbeat(request.group_id, request.member_id, request.generation_id)
    except KafkaError as exc:
        return {"throttle_time": 0, "error_code": exc.code}
    return {"throttle_time": 0, "error_code": 0}


async def handle_leave_group(conn: Connection, request: Any, version: int) -> dict:
    if version >= 3:
        ids = [(m.member_id, m.group_instance_id) for m in request.members]
    else:
        ids = [(request.member_id, None)]
    if (code := _coordinator_error(conn, request.group_id)) is not None:
        return {"throttle_time": 0, "error_code": code, "members": []}
    members = []
    for member_id, instance_id in ids:
        try:
            conn.listener.groups.leave(request.group_id, member_id)
            members.append({"member_id": member_id, "group_instance_id": instance_id, "error_code": 0})
        except KafkaError as exc:
            members.append({"member_id": member_id, "group_instance_id": instance_id, "error_code": exc.code})
    top = members[0]["error_code"] if version < 3 else 0
    return {"throttle_time": 0, "error_code": top, "members": members}


# -- committed offsets -------------------------------------------------------------------


def _offset_path(group: str, topic: str, partition: int) -> str:
    return f"/v1/groups/{quote(group, safe='')}/topics/{quote(topic, safe='')}/partitions/{partition}/offset"


async def handle_offset_commit(conn: Connection, request: Any, version: int) -> dict:
    group_id = request.group_id
    code = _coordinator_error(conn, group_id)
    if code is None:
        try:
            conn.listener.groups.check_commit(
                group_id, request.member_id, getattr(request, "generation_id_or_member_epoch", -1)
            )
        except KafkaError as exc:
            code = exc.code
    if conn.broker.groups is not None:
        return {"throttle_time": 0, "topics": await _commit_replicated(conn, group_id, request.topics, code)}
    topics = []
    for topic in request.topics:
        parts = await asyncio.gather(*(
            _commit_one(conn, group_id, topic.name, p.partition_index, p.committed_offset, p.committed_metadata or "")
            if code is None and may(conn, topic.name, "consume")
            else _failed(p.partition_index, code or ErrorCode.topic_authorization_failed)
            for p in topic.partitions
        ))
        topics.append({"name": topic.name, "partitions": parts})
    return {"throttle_time": 0, "topics": topics}


async def _commit_replicated(conn: Connection, group: str, request_topics, code: ErrorCode | None) -> list[dict]:
    """Append the permitted offsets of one OffsetCommit to ``__consumer_offsets`` at once
    (the member and generation were checked by this listener's group coordinator)."""
    entries = [
        (topic.name, p.partition_index, p.committed_offset, p.committed_metadata or "")
        for topic in request_topics if code is None and may(conn, topic.name, "consume") for p in topic.partitions
    ]
    stored = 0
    if entries:
        try:
            await conn.broker.commit_offsets(group, None, None, entries)
        except ShoalError as exc:
            stored = _coordinator_code(conn, group, exc)
    topics = []
    for topic in request_topics:
        failed = code or (ErrorCode.topic_authorization_failed if not may(conn, topic.name, "consume") else None)
        topics.append({"name": topic.name, "partitions": [
            {"partition_index": p.partition_index, "error_code": failed or stored} for p in topic.partitions
        ]})
    return topics


def _coordinator_code(conn: Connection, group: str, exc: ShoalError) -> int:
    """The Kafka error of a replicated coordinator's refusal: loading its partition
    (503 here) -> COORDINATOR_LOAD_IN_PROGRESS, moved -> NOT_COORDINATOR, no live
    coordinator -> COORDINATOR_NOT_AVAILABLE."""
    if isinstance(exc, NotOwner):
        return ErrorCode.not_coordinator
    if isinstance(exc, LeaderNotAvailable):
        if conn.broker.groups is not None and conn.broker.groups.coordinator_id(group) == conn.broker.broker_id:
            return ErrorCode.coordinator_load_in_progress
        return ErrorCode.coordinator_not_available
    if isinstance(exc, BrokerUnavailable):
        return ErrorCode.coordinator_not_available
    return kafka_code(exc)


async def _failed(partition: int, code: ErrorCode) -> dict:
    return {"partition_index": partition, "error_code": code}


def _leader(conn: Connection, topic: str, partition: int):
    """The broker that leads ``topic/partition`` (it stores the partition's committed offsets)."""
    broker = conn.broker
    leader = partition_state(broker, topic, partition).leader
    if leader < 0:
        raise LeaderNotAvailable(f"{topic}/{partition} has no live leader", topic=topic, partition=partition)
    return broker.topology.broker(leader)


def _offset_error(exc: ShoalError) -> int:
    if isinstance(exc, (NotOwner, LeaderNotAvailable)):  # the leader moved: retriable for a Kafka client
        return ErrorCode.coordinator_not_available
    return kafka_code(exc)


async def _commit_one(conn: Connection, group: str, topic: str, partition: int, offset: int, metadata: str) -> dict:
    broker = conn.broker
    try:
        leader = _leader(conn, topic, partition)
        if leader.id == broker.broker_id:
            async with broker.writing(topic, partition):
                await broker.logs.offsets.commit(group, [(topic, partition, offset, metadata)])
        else:
            url = leader.url + _offset_path(group, topic, partition)
            async with conn.listener.peers.put(url, json={"offset": offset, "metadata": metadata}, headers=conn.peer_headers()) as resp:
                if resp.status != 200:
                    raise ShoalError.from_problem(await resp.json(content_type=None), status=resp.status)
    except ShoalError as exc:
        return {"partition_index": partition, "error_code": _offset_error(exc)}
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        log.warning("kafka group %s: committing %s/%d on its leader failed: %s", group, topic, partition, exc)
        return {"partition_index": partition, "error_code": ErrorCode.coordinator_not_available}
    return {"partition_index": partition, "error_code": 0}


async def _committed(conn: Connection, group: str, topic: str, partition: int) -> dict:
    out = {"partition_index": partition, "committed_offset": -1, "metadata": "", "error_code": 0}
    broker = conn.broker
    try:
        leader = _leader(conn, topic, partition)
        if leader.id == broker.broker_id:
            found = broker.logs.offsets.get(group, topic, partition)
            if found is not None:
                out.update(committed_offset=found.offset, metadata=found.metadata)
            return out
        url = leader.url + _offset_path(group, topic, partition)
        async with conn.listener.peers.get(url, headers=conn.peer_headers()) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                raise ShoalError.from_problem(body, status=resp.status)
        if body.get("offset") is not None:
            out.update(committed_offset=body["offset"], metadata=body.get("metadata") or "")
    except ShoalError as exc:
        out["error_code"] = _offset_error(exc)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
        out["error_code"] = ErrorCode.coordinator_not_available
    return out


async def _all_committed(conn: Connection, group: str) -> dict[str, list[tuple[int, int, str]]]:
    """Every committed offset of ``group``, asked of every broker."""
    broker = conn.broker
    rows: dict[str, list] = {}

    async def ask(b) -> list[dict]:
        if b.id == broker.broker_id:
            return [{"topic": tp.topic, "partition": tp.partition, "offset": c.offset, "metadata": c.metadata}
                    for tp, c in broker.logs.offsets.group_offsets(group).items()]
        async with conn.listener.peers.get(f"{b.url}/v1/groups/{quote(group, safe='')}", headers=conn.peer_headers()) as resp:
            return (await resp.json(content_type=None)).get("partitions", []) if resp.status == 200 else []

    answers = await asyncio.gather(*(ask(b) for b in broker.topology.brokers), return_exceptions=True)
    for answer in answers:
        if isinstance(answer, BaseException):
            continue
        for row in answer:
            rows.setdefault(row["topic"], []).append((row["partition"], row["offset"], row.get("metadata") or ""))
    return rows


async def handle_offset_fetch(conn: Connection, request: Any, version: int) -> dict:
    group_id = request.group_id
    if (code := _coordinator_error(conn, group_id)) is not None:
        return {"throttle_time": 0, "topics": [], "error_code": code}
    if conn.broker.groups is not None:
        try:
            found = await conn.broker.groups.offsets_at_coordinator(group_id, None)
        except ShoalError as exc:
            return {"throttle_time": 0, "topics": [], "error_code": _coordinator_code(conn, group_id, exc)}
        return {"throttle_time": 0, "topics": _fetched(conn, found, request.topics), "error_code": 0}
    topics = []
    if request.topics is None:
        for name, rows in sorted((await _all_committed(conn, group_id)).items()):
            if not may(conn, name, "consume"):
                continue
            topics.append({"name": name, "partitions": [
                {"partition_index": p, "committed_offset": o, "metadata": m, "error_code": 0} for p, o, m in sorted(rows)
            ]})
    else:
        for topic in request.topics:
            if may(conn, topic.name, "consume"):
                parts = await asyncio.gather(*(_committed(conn, group_id, topic.name, p) for p in topic.partition_indexes))
            else:
                parts = [{"partition_index": p, "committed_offset": -1, "metadata": "",
                          "error_code": ErrorCode.topic_authorization_failed} for p in topic.partition_indexes]
            topics.append({"name": topic.name, "partitions": parts})
    return {"throttle_time": 0, "topics": topics, "error_code": 0}


def _fetched(conn: Connection, found: dict, request_topics) -> list[dict]:
    """OffsetFetch's topics from a group's committed offsets (every topic when the
    request names none)."""
    if request_topics is None:
        names = sorted({tp.topic for tp in found})
        wanted = [(n, sorted(tp.partition for tp in found if tp.topic == n)) for n in names if may(conn, n, "consume")]
    else:
        wanted = [(t.name, list(t.partition_indexes)) for t in request_topics]
    topics = []
    for name, partitions in wanted:
        allowed = may(conn, name, "consume")
        rows = []
        for p in partitions:
            om = found.get(TopicPartition(name, p)) if allowed else None
            rows.append({"partition_index": p, "committed_offset": om.offset if om else -1,
                         "metadata": om.metadata if om else "",
                         "error_code": 0 if allowed else ErrorCode.topic_authorization_failed})
        topics.append({"name": name, "partitions": rows})
    return topics


# -- describing groups -----------------------------------------------------------------


async def handle_describe_groups(conn: Connection, request: Any, version: int) -> dict:
    groups = []
    for group_id in request.groups:
        code = _coordinator_error(conn, group_id)
        if code is not None:
            groups.append({"error_code": code, "group_id": group_id, "group_state": "", "protocol_type": "", "protocol_data": "", "members": []})
        else:
            groups.append(conn.listener.groups.describe(group_id))
    return {"throttle_time": 0, "groups": groups}


async def handle_list_groups(conn: Connection, request: Any, version: int) -> dict:
    wanted = {s.lower() for s in getattr(request, "states_filter", ())}
    groups = [
        {"group_id": g.group_id, "protocol_type": g.protocol_type, "group_state": g.state}
        for g in conn.listener.groups.groups.values()
        if (not wanted or g.state.lower() in wanted) and may(conn, g.group_id, "groups")
    ]
    return {"throttle_time": 0, "error_code": 0, "groups": groups}


# -- topic administration: refused -------------------------------------------------------


def _topic_change_refused(conn: Connection) -> tuple[ErrorCode, str]:
    if not is_admin(conn):
        return ErrorCode.topic_authorization_failed, "changing topics needs the admin permission"
    return ErrorCode.policy_violation, _NO_TOPIC_CHANGES


async def handle_create_topics(conn: Connection, request: Any, version: int) -> dict:
    """Refused (see ``_topic_change_refused``), except that an admin asking for a topic that
    exists is answered TOPIC_ALREADY_EXISTS, as Kafka does (clients that make sure of a
    topic take that as success)."""
    code, message = _topic_change_refused(conn)
    existing = conn.broker.topology.topics
    return {"throttle_time": 0, "topics": [
        {"name": t.name, "error_code": ErrorCode.topic_already_exists, "error_message": f"Topic '{t.name}' already exists."}
        if t.name in existing and code == ErrorCode.policy_violation else
        {"name": t.name, "error_code": code, "error_message": message}
        for t in request.topics
    ]}  # fmt: skip


async def handle_delete_topics(conn: Connection, request: Any, version: int) -> dict:
    names = list(request.topic_names) if version < 6 else [t.name for t in request.topics]
    code, message = _topic_change_refused(conn)
    return {"throttle_time": 0, "responses": [{"name": name, "error_code": code, "error_message": message} for name in names]}


APIS = {
    OFFSET_COMMIT: (2, 8, handle_offset_commit),
    OFFSET_FETCH: (1, 7, handle_offset_fetch),
    FIND_COORDINATOR: (0, 3, handle_find_coordinator),
    JOIN_GROUP: (0, 7, handle_join_group),
    HEARTBEAT: (0, 4, handle_heartbeat),
    LEAVE_GROUP: (0, 4, handle_leave_group),
    SYNC_GROUP: (0, 5, handle_sync_group),
    DESCRIBE_GROUPS: (0, 5, handle_describe_groups),
    LIST_GROUPS: (0, 4, handle_list_groups),
    CREATE_TOPICS: (2, 5, handle_create_topics),
    DELETE_TOPICS: (1, 4, handle_delete_topics),
}
