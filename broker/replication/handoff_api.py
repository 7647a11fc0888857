"""``POST /v1/topics/{topic}/partitions/{partition}/hand-off``: a controlled leader
hand-off on request (``shoal cluster rebalance-leaders``), answered by the leader once
the successor leads (``Reassigner.hand_off``)."""

from __future__ import annotations

from aiohttp import web

from shoal.broker.state import BROKER
from shoal.client.errors import InvalidRequest, LeaderNotAvailable
from shoal.client.structs import TopicPartition
from shoal.router.metadata.partition import TransitionError
from shoal.router.server.params import json_object, path_partition

from .reassignment import HANDOFF_TIMEOUT_S


async def hand_off_request(request: web.Request) -> web.Response:
    """``POST /v1/topics/{topic}/partitions/{partition}/hand-off`` ``{"to": id}`` (default:
    the preferred leader): a controlled hand-off by the partition's leader."""
    broker = request.app[BROKER]
    if broker.replicas is None:
        raise InvalidRequest("this cluster is not replicated (no metadata: section)")
    topic, partition = path_partition(request)
    body = await json_object(request) if request.can_read_body else {}
    tp = TopicPartition(topic, partition)
    state = broker.leadership.check(tp)
    to = body.get("to", state.target[0])
    if not isinstance(to, int) or isinstance(to, bool):
        raise InvalidRequest("to must be a broker id", field="to")
    if to == state.leader:
        return web.json_response({"leader": state.leader, "leader_epoch": state.leader_epoch, "refused_ms": 0})
    reassigner = broker.replicas.reassigner
    try:
        new = await reassigner.hand_off(tp, to)
    except TransitionError as exc:
        raise InvalidRequest(f"cannot hand {topic}/{partition} to broker {to}: {exc}", field="to") from None
    except TimeoutError:
        raise LeaderNotAvailable(
            f"broker {to} did not catch up with {topic}/{partition} within {HANDOFF_TIMEOUT_S:g}s; the leader stays",
            topic=topic, partition=partition, retry_after=1,
        ) from None
    return web.json_response(
        {"leader": new.leader, "leader_epoch": new.leader_epoch, "refused_ms": round(reassigner.handoff_ms[-1], 1)}
    )


def add_handoff_route(app: web.Application) -> None:
    app.router.add_post("/v1/topics/{topic}/partitions/{partition}/hand-off", hand_off_request)
