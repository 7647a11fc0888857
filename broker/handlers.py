"""HTTP handlers of API v1 for one broker. Handlers validate, call the broker, and raise.

Errors are rendered by ``shoal.router.server.middlewares.problem_errors``; nothing here builds
an error response by hand.
"""

from __future__ import annotations

import asyncio
import json
import logging
from importlib.metadata import version

from aiohttp import web

from shoal.broker.group_handlers import add_group_routes
from shoal.broker.kafka import as_shoal_frames
from shoal.broker.state import BROKER, JSON_THREADS, METRICS
from shoal.broker.storage.producer_state import is_idempotent
from shoal.client.errors import (
    CorruptRecordError,
    CorruptStoredRecord,
    InvalidRequest,
    InvalidTimestamp,
    NotAcceptable,
    OffsetOutOfRange,
    StorageFull,
    UnsupportedMediaType,
)
from shoal.client.json_records import encode_json_batch, records_to_json
from shoal.client.names import check_name
from shoal.client.records import FrameHeader, decode_batch, iter_frames, now_ms, validate_frames
from shoal.client.structs import TopicPartition
from shoal.router.server.params import json_body, json_object, path_partition, query_int, topology_change

log = logging.getLogger(__name__)

BATCH = "application/vnd.shoal.batch"
JSON = "application/json"
DEFAULT_FETCH_BYTES = 1 << 20
# A JSON fetch decodes and re-encodes what it answers (in a worker thread, off the event
# loop): at most this many bytes of stored frames, at least one batch.
MAX_JSON_FETCH_BYTES = 1 << 20
MAX_METADATA = 4096


ACKS = ("all", "-1", "1")  # -1 is Kafka's spelling of all


def _wants_batch(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "*/*")
    if BATCH in accept:
        return True
    if JSON in accept or "*/*" in accept or "application/*" in accept:
        return False
    raise NotAcceptable(f"cannot answer with {accept[:80]!r}", supported=[JSON, BATCH])


def _watermarks(plog) -> dict[str, str]:
    return {
        "Shoal-High-Watermark": str(plog.high_watermark),
        "Shoal-Log-Start-Offset": str(plog.log_start_offset),
    }


# --- data plane ---------------------------------------------------------------


def _check_produce(headers: list[FrameHeader], max_future_ms: int) -> None:
    """Refuse what validate_frames cannot see: an idempotent batch sent with others,
    and timestamps too far ahead of this broker's clock."""
    if len(headers) > 1 and any(map(is_idempotent, headers)):
        raise InvalidRequest(
            f"a body holds {len(headers)} batches, some with a producer id: send each idempotent "
            "batch in a request of its own",
            field="body",
        )
    newest = max(h.max_timestamp for h in headers)
    if newest > now_ms() + max_future_ms:
        raise InvalidTimestamp(
            f"timestamp {newest} is more than {max_future_ms} ms ahead of the broker's clock",
            timestamp=newest, max_future_ms=max_future_ms,
        )


async def produce(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    topic, partition = path_partition(request)
    leader_epoch = query_int(request, "leader_epoch", None) if "leader_epoch" in request.query else None
    acks = request.query.get("acks", "all")
    if acks not in ACKS:
        raise InvalidRequest(f"acks must be all or 1, got {acks[:20]!r}", field="acks")
    broker.check_owner(topic, partition, leader_epoch)  # before reading a body we would refuse
    if broker.replicas is not None and acks != "1":
        broker.replicas.check_insync(TopicPartition(topic, partition))
    ctype = request.content_type
    if ctype == BATCH:
        body = await request.read()
        headers = validate_frames(body, max_batch_bytes=broker.topology.settings.max_batch_bytes)
    elif ctype == JSON:
        body = encode_json_batch(await json_body(request))
        headers = validate_frames(body)
    else:
        raise UnsupportedMediaType(
            f"send {BATCH} or {JSON}, not {ctype or 'no content type'}", supported=[BATCH, JSON]
        )
    _check_produce(headers, broker.topology.topic(topic).max_future_ms)
    async with broker.writing(topic, partition) as plog:
        try:
            result = await plog.append(body, headers)
        except StorageFull as exc:
            exc.broker_id = broker.broker_id
            raise
    if broker.replicas is not None:
        tp = TopicPartition(topic, partition)
        broker.replicas.advance(tp)  # an ISR of the leader alone: the write alone moves the high watermark
        if acks != "1":
            await broker.replicas.wait_replicated(tp, plog, result.last_offset)
        # A leader that lost its lease (or its leadership) meanwhile acknowledges nothing:
        # the client retries at the leader, whose idempotent producer state has the batch.
        broker.leadership.check(tp, leader_epoch)
    count = result.last_offset - result.base_offset + 1
    request.app[METRICS].appended(topic, count, len(body))
    return web.json_response(
        {"base_offset": result.base_offset, "count": count, "duplicate": result.duplicate},
        headers=_watermarks(plog),
    )


async def fetch(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    topic, partition = path_partition(request)
    plog = await broker.partition_log(topic, partition)
    settings = broker.topology.settings
    as_batch = _wants_batch(request)
    offset = query_int(request, "offset", plog.log_start_offset)
    max_bytes = min(query_int(request, "max_bytes", DEFAULT_FETCH_BYTES, minimum=1), settings.max_fetch_bytes)
    max_wait_ms = min(query_int(request, "max_wait_ms", 0), settings.max_wait_ms)
    if offset == plog.high_watermark and max_wait_ms > 0:
        await plog.wait_for(offset, max_wait_ms / 1000)
    if not as_batch:
        max_bytes = min(max_bytes, MAX_JSON_FETCH_BYTES)
    data = as_shoal_frames(plog.read(offset, max_bytes))  # Kafka batches among them converted
    request.app[METRICS].fetched(topic, len(data))
    headers = _watermarks(plog)
    if as_batch:
        return web.Response(body=data, content_type=BATCH, headers=headers)
    marks = {"high_watermark": plog.high_watermark, "log_start_offset": plog.log_start_offset}
    loop = asyncio.get_running_loop()
    body = await loop.run_in_executor(request.app[JSON_THREADS], _json_fetch, topic, partition, data, offset, marks)
    return web.Response(body=body, content_type=JSON, headers=headers)


def _json_fetch(topic: str, partition: int, data: bytes, offset: int, marks: dict) -> bytes:
    """The JSON answer of a fetch: the records of each stored frame that decodes, up to
    the first that does not (CORRUPT_RECORD when that is the first one)."""
    records: list = []
    for h, frame in iter_frames(data, check_crc=False):
        if h.next_offset <= offset:
            continue
        try:
            batch, _ = decode_batch(topic, partition, frame, min_offset=offset)
        except CorruptRecordError as exc:
            if records:
                break  # answer what decodes; the next fetch starts at the bad batch
            raise CorruptStoredRecord(
                f"the batch of {topic}/{partition} at offset {h.base_offset} does not decode ({exc}); "
                f"fetch from offset {h.next_offset} to skip it",
                topic=topic, partition=partition, offset=h.base_offset, next_offset=h.next_offset,
            ) from None
        records.extend(batch.tolist())
    return json.dumps({"records": records_to_json(records), **marks}).encode()


async def offsets(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    topic, partition = path_partition(request)
    plog = await broker.partition_log(topic, partition)
    out = {"log_start_offset": plog.log_start_offset, "high_watermark": plog.high_watermark}
    if "timestamp" in request.query:
        out["offset"] = plog.offset_for_timestamp(query_int(request, "timestamp", 0))
    return web.json_response(out, headers=_watermarks(plog))


# --- committed offsets ---------------------------------------------------------


async def get_committed(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    group = check_name(request.match_info["group"], "group")
    topic, partition = path_partition(request)
    plog = await broker.partition_log(topic, partition)
    committed = await broker.committed(group, topic, partition, authorization=request.headers.get("Authorization"))
    return web.json_response(
        {
            "group": group,
            "topic": topic,
            "partition": partition,
            "offset": committed.offset if committed else None,
            "metadata": committed.metadata if committed else "",
            "high_watermark": plog.high_watermark,
            "log_start_offset": plog.log_start_offset,
        }
    )


async def put_committed(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    group = check_name(request.match_info["group"], "group")
    topic, partition = path_partition(request)
    broker.check_owner(topic, partition)  # before reading a body we would refuse
    body = await json_object(request)
    offset = body.get("offset")
    if not isinstance(offset, int) or isinstance(offset, bool):
        raise InvalidRequest("offset must be an integer", field="offset")
    metadata = body.get("metadata", "")
    if metadata is None:
        metadata = ""
    if not isinstance(metadata, str) or len(metadata) > MAX_METADATA:
        raise InvalidRequest(f"metadata must be a string of at most {MAX_METADATA} characters", field="metadata")
    member_id = body.get("member_id")
    generation = body.get("generation")
    if member_id is not None and not isinstance(member_id, str):
        raise InvalidRequest("member_id must be a string", field="member_id")
    if generation is not None and (not isinstance(generation, int) or isinstance(generation, bool)):
        raise InvalidRequest("generation must be an integer", field="generation")
    async with broker.writing(topic, partition) as plog:
        if not plog.log_start_offset <= offset <= plog.high_watermark:
            raise OffsetOutOfRange(
                f"cannot commit {offset} for {topic}/{partition}: valid offsets are "
                f"{plog.log_start_offset}..{plog.high_watermark}",
                offset=offset, log_start_offset=plog.log_start_offset, high_watermark=plog.high_watermark,
            )
        await broker.commit_offsets(
            group, member_id, generation, [(topic, partition, offset, metadata)],
            authorization=request.headers.get("Authorization"),
        )
    return web.json_response({"group": group, "topic": topic, "partition": partition, "offset": offset, "metadata": metadata})


def _group_view(broker, group: str, offsets: dict) -> dict:
    rows = []
    for tp, committed in sorted(offsets.items()):
        plog = broker.logs.get(tp.topic, tp.partition)
        hw = plog.high_watermark if plog else None
        rows.append(
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "offset": committed.offset,
                "metadata": committed.metadata,
                "high_watermark": hw,
                "lag": None if hw is None else max(0, hw - committed.offset),
            }
        )
    return {"group": group, "broker_id": broker.broker_id, "partitions": rows}


async def list_groups(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    held = broker.local_group_offsets()
    return web.json_response({"groups": [_group_view(broker, g, held[g]) for g in sorted(held)]})


async def describe_group(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    group = check_name(request.match_info["group"], "group")
    return web.json_response(_group_view(broker, group, broker.local_group_offsets().get(group, {})))


async def delete_group(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    group = check_name(request.match_info["group"], "group")
    await broker.delete_group_offsets(group)
    return web.json_response({"group": group, "deleted": True})


# --- cluster and operations -----------------------------------------------------


async def get_cluster(request: web.Request) -> web.Response:
    return web.json_response(request.app[BROKER].cluster_view())


async def put_cluster(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    change = await topology_change(request)
    await broker.install(change.topology, change.delete_topics)
    return web.json_response(broker.cluster_view())


_VERSION = version("shoal")


async def health(request: web.Request) -> web.Response:
    """200 while the broker serves; ``status`` is ``degraded`` while a partition cannot take
    writes (its last write or segment roll failed), each listed with the reason."""
    broker = request.app[BROKER]
    failed = [
        {"topic": plog.topic, "partition": plog.partition, "error": plog.error}
        for plog in broker.logs.logs()
        if plog.error is not None
    ]
    body = {
        "status": "degraded" if failed else "ok",
        "broker_id": broker.broker_id,
        "epoch": broker.topology.epoch,
        "version": _VERSION,
    }
    if failed:
        body["failed_partitions"] = failed
    if broker.ahead is not None:
        body["pending_epoch"] = broker.ahead.epoch
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_routes(app: web.Application) -> None:
    part = "/v1/topics/{topic}/partitions/{partition}"
    app.router.add_post(part + "/records", produce)
    app.router.add_get(part + "/records", fetch)
    app.router.add_get(part + "/offsets", offsets)
    app.router.add_get("/v1/groups/{group}/topics/{topic}/partitions/{partition}/offset", get_committed)
    app.router.add_put("/v1/groups/{group}/topics/{topic}/partitions/{partition}/offset", put_committed)
    app.router.add_get("/v1/groups", list_groups)
    app.router.add_get("/v1/groups/{group}", describe_group)
    app.router.add_delete("/v1/groups/{group}", delete_group)
    app.router.add_get("/v1/cluster", get_cluster)
    app.router.add_put("/v1/cluster", put_cluster)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/metrics", metrics)
    add_group_routes(app)

