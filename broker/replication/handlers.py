"""The leader's side of replication: ``POST /v1/replica/fetch`` and ``/v1/replica/epoch-end``.

All take and give msgpack (``application/msgpack``), per partition in the order asked.

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

- stream: ``GET /v1/replica/stream``, a WebSocket on which a follower sends the same
  fetch bodies (binary messages) and gets each answer back in order, one at a time:
  one connection per follower and leader, authenticated once, so the round trip that
  tells the leader a follower has a batch (and moves the high watermark every
  ``acks=all`` produce waits on) costs two WebSocket messages instead of an HTTP
  request and response. A malformed body, or a cluster that is not replicated, closes the
  stream (code 1008, the problem in its reason).

``error`` is None or a code: ``FENCED_LEADER_EPOCH`` (the caller's epoch is not the
current one), ``NOT_OWNER`` / ``LEADER_NOT_AVAILABLE`` (this broker does not lead it at
a valid lease), ``OFFSET_OUT_OF_RANGE`` (a fetch offset past the leader's log end, or
below its log start: then ``log_start_offset`` says where the follower starts again).

With ``auth:`` all need a principal with ``replication`` (or ``admin``); the
authentication middleware refuses anyone else (``router.server.auth``), and followers
send their broker's own token (``$SHOAL_BROKER_TOKEN``).
"""

from __future__ import annotations

import asyncio
import logging
import weakref

import msgpack
from aiohttp import WSCloseCode, WSMsgType, web

from shoal.broker.state import BROKER
from shoal.client.errors import InvalidRequest, ShoalApiError
from shoal.client.structs import TopicPartition

log = logging.getLogger(__name__)

MSGPACK = "application/msgpack"
MAX_WAIT_MS = 5000
STREAM_MAX_REQUEST = 4 << 20  # a fetch body names partitions, it carries no records
STREAM_IDLE_S = 60.0  # a stream without a fetch for this long is closed (its follower is gone)
STREAMS = web.AppKey("replica_streams", weakref.WeakSet)


async def _body(request: web.Request) -> dict:
    return _parse(await request.read())


def _parse(data: bytes) -> dict:
    try:
        body = msgpack.unpackb(data)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise InvalidRequest(f"the body is not msgpack: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("partitions"), list):
        raise InvalidRequest("the body must be a map with a partitions list", field="partitions")
    return body


def _replicated(broker) -> None:
    if broker.replicas is None:
        raise InvalidRequest("this cluster is not replicated (no metadata: section)")


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
    _replicated(broker)
    body = await _body(request)
    broker.replicas.fetches["http"] += 1
    return web.Response(body=msgpack.packb(await _answer_fetch(broker, body)), content_type=MSGPACK)


async def replica_stream(request: web.Request) -> web.WebSocketResponse:
    broker = request.app[BROKER]
    _replicated(broker)
    ws = web.WebSocketResponse(max_msg_size=STREAM_MAX_REQUEST, receive_timeout=STREAM_IDLE_S, timeout=2.0)
    await ws.prepare(request)
    streams = request.app[STREAMS]
    streams.add(ws)
    broker.replicas.streams += 1
    try:
        while not ws.closed:
            try:
                msg = await ws.receive()
            except TimeoutError:
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"no fetch for a while")
                break
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
            if msg.type != WSMsgType.BINARY:
                await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"fetches are binary msgpack messages")
                break
            try:
                answer = await _answer_fetch(broker, _parse(msg.data))
            except ShoalApiError as exc:
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=f"{exc.code}: {exc}"[:120].encode())
                break
            broker.replicas.fetches["stream"] += 1
            try:
                await ws.send_bytes(msgpack.packb(answer))
            except ConnectionError:  # the follower went away while the fetch waited
                break
    except Exception:
        log.exception("replica stream from %s failed", request.remote)
        await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error; see the leader's log")
    finally:
        streams.discard(ws)
        broker.replicas.streams -= 1
    return ws


async def _close_streams(app: web.Application) -> None:
    """On shutdown: followers reconnect (to whoever leads next) instead of holding it up."""
    for ws in list(app[STREAMS]):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"broker shutting down")


async def _answer_fetch(broker, body: dict) -> dict:
    follower = body.get("replica_id")
    max_bytes = int(body.get("max_bytes", 1 << 20))
    wait_s = min(int(body.get("max_wait_ms", 0)), MAX_WAIT_MS) / 1000
    asks = [(str(t), int(p), int(o), int(e)) for t, p, o, e in body["partitions"]]
    throttle = broker.replicas.reassigner.throttle
    answers = [_fetch_one(broker, throttle, follower, ask, max_bytes) for ask in asks]
    out = [part for part, _, _ in answers]
    if any(part[2] for part in out) or wait_s <= 0:
        return {"partitions": out}
    if any(throttled for _, _, throttled in answers):
        await asyncio.sleep(min(wait_s, throttle.refill_s()))  # not a busy loop while the throttle is spent
        return {"partitions": out}
    idle = [(i, plog) for i, (_, plog, _) in enumerate(answers) if plog is not None]
    if not idle:
        return {"partitions": out}
    # Nothing new anywhere: every log asked for is at the follower's offset. Wait on one
    # event for the first write to any of them, then read again only where one came (the
    # others' answers stand: a fetch is not woken by a high watermark alone, as in Kafka).
    written = asyncio.Event()
    for _, plog in idle:
        plog.watch_end(written)
    try:
        async with asyncio.timeout(wait_s):
            await written.wait()
    except TimeoutError:
        pass
    finally:
        for _, plog in idle:
            plog.unwatch_end(written)
    if written.is_set():
        for i, plog in idle:
            if plog.log_end_offset > asks[i][2]:
                out[i] = _fetch_one(broker, throttle, follower, asks[i], max_bytes)[0]
    return {"partitions": out}


def _fetch_one(broker, throttle, follower: int, ask: tuple, max_bytes: int) -> tuple[list, object, bool]:
    """One partition's part of a fetch answer, ``[error, high_watermark, frames,
    log_start]``; the partition's log when there was nothing new to read in it; and
    whether the reassignment throttle held it back."""
    topic, partition, offset, epoch = ask
    plog, error = _leader_log(broker, topic, partition, epoch)
    if error is None and not plog.log_start_offset <= offset <= plog.log_end_offset:
        error = "OFFSET_OUT_OF_RANGE"
    if error is not None:
        return [error, -1, b"", plog.log_start_offset if plog is not None else -1], None, False
    tp = TopicPartition(topic, partition)
    broker.replicas.follower_fetched(tp, follower, offset)
    budget = throttle.budget(tp, follower, max_bytes)  # a replica being added copies at the throttle
    if budget <= 0:
        return [None, plog.high_watermark, b"", plog.log_start_offset], None, True
    frames = plog.read(offset, budget, to_log_end=True)
    throttle.spent(tp, follower, len(frames))
    return [None, plog.high_watermark, frames, plog.log_start_offset], None if frames else plog, False


async def epoch_end(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    _replicated(broker)
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
    app.router.add_get("/v1/replica/stream", replica_stream)
    app[STREAMS] = weakref.WeakSet()
    app.on_shutdown.append(_close_streams)
