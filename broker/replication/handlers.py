"""The leader's side of replication: ``POST /v1/replica/fetch`` and ``/v1/replica/epoch-end``.

Both take and give msgpack (``application/msgpack``), per partition in the order asked.

- fetch: ``{"replica_id", "max_wait_ms", "max_bytes", "partitions": [[topic, partition,
  fetch_offset, leader_epoch], ...]}`` -> ``{"partitions": [[error, high_watermark,
  frames, log_start_offset], ...]}``. ``frames`` are the stored frames from
  ``fetch_offset`` up to the log end, byte for byte. The fetch offset is the follower's log end: the leader
  records it, which moves the high watermark and may bring the follower back into the
  ISR. With nothing to send for any partition, the answer waits up to ``max_wait_ms``
  for an append.
- epoch-end: ``{"partitions": [[topic, partition, epoch, current_leader_epoch], ...]}``
  -> ``{"partitions": [[error, epoch, end_offset], ...]}``: the largest epoch at or
  below ``epoch`` in the leader's log and the offset where it ends (Kafka's
  OffsetsForLeaderEpoch).

``error`` is None or a code: ``FENCED_LEADER_EPOCH`` (the caller's epoch is not the
current one), ``NOT_OWNER`` / ``LEADER_NOT_AVAILABLE`` (this broker does not lead it at
a valid lease), ``OFFSET_OUT_OF_RANGE`` (a fetch offset past the leader's log end, or
below its log start: then ``log_start_offset`` says where the follower starts again).

With ``auth:`` both need a principal with ``replication`` (or ``admin``); the
authentication middleware refuses anyone else (``router.server.auth``), and followers
send their broker's own token (``$SHOAL_BROKER_TOKEN``).
"""

from __future__ import annotations

import asyncio

import msgpack
from aiohttp import web

from shoal.broker.state import BROKER
from shoal.client.errors import InvalidRequest, ShoalApiError
from shoal.client.structs import TopicPartition

MSGPACK = "application/msgpack"
MAX_WAIT_MS = 5000


async def _body(request: web.Request) -> dict:
    try:
        body = msgpack.unpackb(await request.read())
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise InvalidRequest(f"the body is not msgpack: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("partitions"), list):
        raise InvalidRequest("the body must be a map with a partitions list", field="partitions")
    return body


def _leader_log(broker, topic: str, partition: int, epoch: int):
    """The log of a partition this broker leads at ``epoch``, or an error code."""
    try:
        broker.check_owner(topic, partition, epoch)
    except ShoalApiError as exc:
        return None, exc.code
    plog = broker.logs.get(topic, partition)
    if plog is None or TopicPartition(topic, partition) not in broker.replicas.leading:
        return None, "LEADER_NOT_AVAILABLE"
    return plog, None


async def replica_fetch(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    if broker.replicas is None:
        raise InvalidRequest("this cluster is not replicated (no metadata: section)")
    body = await _body(request)
    follower = body.get("replica_id")
    max_bytes = int(body.get("max_bytes", 1 << 20))
    wait_s = min(int(body.get("max_wait_ms", 0)), MAX_WAIT_MS) / 1000
    asks = [(str(t), int(p), int(o), int(e)) for t, p, o, e in body["partitions"]]
    throttle = broker.replicas.reassigner.throttle
    for attempt in (0, 1):
        out = []
        logs = []
        throttled = False
        for topic, partition, offset, epoch in asks:
            plog, error = _leader_log(broker, topic, partition, epoch)
            if error is None and not plog.log_start_offset <= offset <= plog.log_end_offset:
                error = "OFFSET_OUT_OF_RANGE"
            if error is not None:
                out.append([error, -1, b"", plog.log_start_offset if plog is not None else -1])
                continue
            tp = TopicPartition(topic, partition)
            broker.replicas.follower_fetched(tp, follower, offset)
            budget = throttle.budget(tp, follower, max_bytes)  # a replica being added copies at the throttle
            if budget <= 0:
                throttled = True
                out.append([None, plog.high_watermark, b"", plog.log_start_offset])
                continue
            frames = plog.read(offset, budget, to_log_end=True)
            throttle.spent(tp, follower, len(frames))
            out.append([None, plog.high_watermark, frames, plog.log_start_offset])
            logs.append((plog, offset))
        if throttled and not any(part[2] for part in out):
            await asyncio.sleep(min(wait_s, throttle.refill_s()))  # not a busy loop while the throttle is spent
            break
        if attempt or any(part[2] for part in out) or not logs or wait_s <= 0:
            break
        waits = [asyncio.ensure_future(plog.wait_for_end(offset, wait_s)) for plog, offset in logs]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
    return web.Response(body=msgpack.packb({"partitions": out}), content_type=MSGPACK)


async def epoch_end(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    if broker.replicas is None:
        raise InvalidRequest("this cluster is not replicated (no metadata: section)")
    body = await _body(request)
    out = []
    for topic, partition, epoch, current in body["partitions"]:
        plog, error = _leader_log(broker, str(topic), int(partition), int(current))
        if error is not None:
            out.append([error, -1, -1])
            continue
        found_epoch, end = plog.epochs.end_offset_for(int(epoch), plog.log_end_offset)
        out.append([None, found_epoch, end])
    return web.Response(body=msgpack.packb({"partitions": out}), content_type=MSGPACK)


def add_replica_routes(app: web.Application) -> None:
    app.router.add_post("/v1/replica/fetch", replica_fetch)
    app.router.add_post("/v1/replica/epoch-end", epoch_end)
