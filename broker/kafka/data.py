"""Produce, Fetch, ListOffsets, OffsetForLeaderEpoch and InitProducerId over the broker's logs.

Produce checks each Kafka v2 batch (``records.check_batches``) and appends it as it
came, beside shoal's frames, so one log serves both protocols; Fetch hands stored
Kafka batches out unchanged and converts shoal frames into v2 batches. Only the
partition's leader answers (``Broker.check_owner``: the owner of a static cluster, the
leader in etcd of a replicated one). Errors are per partition, with Kafka's codes:
NOT_LEADER_OR_FOLLOWER for a partition another broker leads, LEADER_NOT_AVAILABLE
while it has no live leader, OFFSET_OUT_OF_RANGE, FENCED_LEADER_EPOCH /
UNKNOWN_LEADER_EPOCH for a ``current_leader_epoch`` older / newer than the
partition's (``metadata.check_leader_epoch``).

acks, as shoal's HTTP ``acks``: ``-1`` is ``all``: refused before the write with
NOT_ENOUGH_REPLICAS when the ISR is below ``min_insync_replicas``, answered once the
high watermark covers the batch, or NOT_ENOUGH_REPLICAS_AFTER_APPEND when the ISR
does not copy it in time (an idempotent retry is then recognised). ``1`` answers after
the leader's write, ``0`` sends no response. In a static cluster the leader is the
whole ISR and all three answer after the write. Transactions are not supported.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode

from shoal.broker.kafka.codec import millis
from shoal.broker.kafka.errors import KafkaError, kafka_code
from shoal.broker.kafka.metadata import check_leader_epoch
from shoal.broker.kafka.records import as_kafka_batches, check_batches
from shoal.broker.kafka.sasl import DESCRIBE, may, may_write_idempotently
from shoal.client.errors import NotEnoughReplicas, ShoalError
from shoal.client.structs import TopicPartition

if TYPE_CHECKING:
    from shoal.broker.kafka.listener import Connection

PRODUCE, FETCH, LIST_OFFSETS, INIT_PRODUCER_ID, OFFSET_FOR_LEADER_EPOCH = 0, 1, 2, 22, 23
EARLIEST, LATEST = -2, -1


async def _leader_log(conn: Connection, topic: str, partition: int, current_epoch: int, *actions: str):
    """(leader epoch, log) of a partition led here, checked as Kafka checks a read: the
    principal's permission (one of ``actions``), the client's epoch, then leadership."""
    if not may(conn, topic, *actions):
        raise KafkaError(ErrorCode.topic_authorization_failed)
    epoch = check_leader_epoch(conn.broker, topic, partition, current_epoch)
    return epoch, await conn.broker.partition_log(topic, partition)


# -- Produce ---------------------------------------------------------------------------


async def handle_produce(conn: Connection, request: Any, version: int) -> dict | None:
    acks = request.acks
    if request.transactional_id is not None:
        fail = ErrorCode.transactional_id_authorization_failed
    elif acks not in (0, 1, -1):
        fail = ErrorCode.invalid_required_acks
    else:
        fail = None
    responses = []
    for topic in request.topic_data:
        parts = topic.partition_data
        refused = fail or (None if may(conn, topic.name, "produce") else ErrorCode.topic_authorization_failed)
        if refused is not None:
            results = [{"index": p.index, "error_code": refused, "base_offset": -1} for p in parts]
        else:
            results = await asyncio.gather(*(_produce_one(conn, topic.name, p.index, p.records, acks) for p in parts))
        responses.append({"name": topic.name, "partition_responses": results})
    if acks == 0:
        return None
    return {"responses": responses, "throttle_time": 0}


async def _produce_one(conn: Connection, topic: str, partition: int, records: bytes | None, acks: int) -> dict:
    broker = conn.broker
    tp = TopicPartition(topic, partition)
    try:
        broker.check_owner(topic, partition)
        if broker.replicas is not None and acks == -1:
            broker.replicas.check_insync(tp)
        body = bytes(records or b"")
        headers = check_batches(body, max_batch_bytes=broker.topology.settings.max_batch_bytes)
        async with broker.writing(topic, partition) as plog:  # a topology install waits for it
            result = await plog.append(body, headers)
        if broker.replicas is not None:
            broker.replicas.advance(tp)  # an ISR of the leader alone: the write alone moves the high watermark
            if acks == -1:
                try:
                    await broker.replicas.wait_replicated(tp, plog, result.last_offset)
                except NotEnoughReplicas as exc:
                    raise KafkaError(ErrorCode.not_enough_replicas_after_append) from exc
            # A leader that lost its lease or its leadership meanwhile acknowledges nothing.
            broker.leadership.check(tp)
    except (KafkaError, ShoalError) as exc:
        return {"index": partition, "error_code": kafka_code(exc), "base_offset": -1, "error_message": str(exc)[:200]}
    return {"index": partition, "error_code": 0, "base_offset": result.base_offset, "log_start_offset": plog.log_start_offset}


async def handle_init_producer_id(conn: Connection, request: Any, version: int) -> dict:
    if request.transactional_id is not None:
        return {"throttle_time": 0, "error_code": ErrorCode.transactional_id_authorization_failed, "producer_id": -1, "producer_epoch": -1}
    if not may_write_idempotently(conn):
        return {"throttle_time": 0, "error_code": ErrorCode.cluster_authorization_failed, "producer_id": -1, "producer_epoch": -1}
    # Ids are drawn at random from 2**62 like shoal's own producers'; each partition's
    # sequence checks then apply to it (Kafka's producer epochs are not kept).
    return {"throttle_time": 0, "error_code": 0, "producer_id": random.getrandbits(62), "producer_epoch": 0}


# -- Fetch -----------------------------------------------------------------------------


async def handle_fetch(conn: Connection, request: Any, version: int) -> dict:
    broker = conn.broker
    settings = broker.topology.settings
    max_wait = min(millis(request.max_wait), settings.max_wait_ms) / 1000
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, max_wait)
    while True:
        responses, size, waiting, failed = await _fetch_once(conn, request)
        remaining = deadline - loop.time()
        if size >= request.min_bytes or failed or not waiting or remaining <= 0:
            return {"throttle_time": 0, "error_code": 0, "session_id": 0, "responses": responses}
        waits = [asyncio.ensure_future(plog.wait_for(offset, remaining)) for plog, offset in waiting]
        try:
            await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()


async def _fetch_once(conn: Connection, request: Any) -> tuple[list[dict], int, list, bool]:
    """One pass over the asked partitions: responses, bytes found, (log, offset) pairs
    to wait on, and whether some partition failed."""
    topology = conn.broker.topology
    budget = min(request.max_bytes, topology.settings.max_fetch_bytes)
    total = 0
    waiting = []
    failed = False
    responses = []
    for topic in request.topics:
        parts = []
        for p in topic.partitions:
            out = {"partition_index": p.partition, "high_watermark": -1, "aborted_transactions": [], "records": b""}
            try:
                epoch, plog = await _leader_log(conn, topic.topic, p.partition, getattr(p, "current_leader_epoch", -1), "consume")
                hw = plog.high_watermark
                out.update(high_watermark=hw, last_stable_offset=hw, log_start_offset=plog.log_start_offset)
                if hw <= p.fetch_offset <= plog.log_end_offset:
                    # Nothing readable yet. Past the high watermark but within the log (a new
                    # leader whose followers have not reported yet) is not out of range.
                    waiting.append((plog, p.fetch_offset))
                elif budget - total > 0 or total == 0:
                    stored = plog.read(p.fetch_offset, max(1, min(p.partition_max_bytes, budget - total)))
                    records = as_kafka_batches(stored, leader_epoch=epoch)
                    if total == 0 or len(records) <= budget - total:  # only a response's first batch may pass max_bytes (KIP-74)
                        out["records"] = records
                        total += len(records)
                out["error_code"] = 0
            except (KafkaError, ShoalError) as exc:
                out["error_code"] = kafka_code(exc)
                failed = True
            parts.append(out)
        responses.append({"topic": topic.topic, "partitions": parts})
    return responses, total, waiting, failed


# -- ListOffsets -------------------------------------------------------------------------


async def handle_list_offsets(conn: Connection, request: Any, version: int) -> dict:
    topics = []
    for topic in request.topics:
        parts = []
        for p in topic.partitions:
            out = {"partition_index": p.partition_index, "timestamp": -1, "offset": -1}
            try:
                epoch, plog = await _leader_log(
                    conn, topic.name, p.partition_index, getattr(p, "current_leader_epoch", -1), *DESCRIBE
                )
                if p.timestamp == EARLIEST:
                    out["offset"] = plog.log_start_offset
                elif p.timestamp == LATEST:
                    out["offset"] = plog.high_watermark
                elif p.timestamp >= 0:
                    found = plog.offset_for_timestamp(p.timestamp)
                    if found is not None:
                        out.update(offset=found, timestamp=p.timestamp)
                else:
                    raise KafkaError(ErrorCode.unsupported_version)
                out["error_code"] = 0
                out["leader_epoch"] = epoch
            except (KafkaError, ShoalError) as exc:
                out["error_code"] = kafka_code(exc)
            parts.append(out)
        topics.append({"name": topic.name, "partitions": parts})
    return {"throttle_time": 0, "topics": topics}


# -- OffsetForLeaderEpoch ------------------------------------------------------------------


async def handle_offset_for_leader_epoch(conn: Connection, request: Any, version: int) -> dict:
    """Where a leader epoch ends in the leader's log (KIP-101/320): a consumer whose
    partition changed leader asks it for the epoch of its position, and finds out whether
    the log it read from was truncated below that position. Answered from the
    leader-epoch cache, as a follower's ``/v1/replica/epoch-end`` is."""
    topics = []
    for topic in request.topics:
        parts = []
        for p in topic.partitions:
            out = {"partition": p.partition, "error_code": 0, "leader_epoch": -1, "end_offset": -1}
            try:
                _, plog = await _leader_log(conn, topic.topic, p.partition, p.current_leader_epoch, *DESCRIBE)
                found, end = plog.epochs.end_offset_for(p.leader_epoch, plog.log_end_offset)
                out.update(leader_epoch=found, end_offset=end)
            except (KafkaError, ShoalError) as exc:
                out["error_code"] = kafka_code(exc)
            parts.append(out)
        topics.append({"topic": topic.topic, "partitions": parts})
    return {"throttle_time": 0, "topics": topics}


APIS = {
    PRODUCE: (3, 9, handle_produce),
    FETCH: (4, 11, handle_fetch),
    LIST_OFFSETS: (1, 7, handle_list_offsets),
    INIT_PRODUCER_ID: (0, 4, handle_init_producer_id),
    OFFSET_FOR_LEADER_EPOCH: (2, 4, handle_offset_for_leader_epoch),
}
