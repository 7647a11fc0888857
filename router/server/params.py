"""Request parameters shared by the broker and the gateway, checked the same way in both."""

from __future__ import annotations

import json
from typing import NamedTuple

from aiohttp import web

from shoal.client.errors import InvalidRequest, UnsupportedMediaType
from shoal.client.names import check_name

from shoal.router.topology import Topology, TopologyError

INT64_MAX = 2**63 - 1


def path_partition(request: web.Request) -> tuple[str, int]:
    """``(topic, partition)`` from the path, or INVALID_REQUEST naming the bad one."""
    topic = check_name(request.match_info["topic"], "topic")
    raw = request.match_info["partition"]
    if not raw.isdigit() or len(raw) > 9:
        raise InvalidRequest(f"partition must be a non-negative integer, got {raw[:40]!r}", field="partition")
    return topic, int(raw)


def query_int(request: web.Request, name: str, default: int | None, *, minimum: int = 0) -> int:
    """An integer query parameter in ``[minimum, 2**63-1]``; ``default`` None makes it required."""
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise InvalidRequest(f"query parameter {name} is required", field=name)
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer, got {raw[:40]!r}", field=name) from None
    if not minimum <= value <= INT64_MAX:
        raise InvalidRequest(f"{name} must be between {minimum} and {INT64_MAX}, got {value}", field=name)
    return value


async def json_body(request: web.Request):
    """The parsed JSON body, or UNSUPPORTED_MEDIA_TYPE / INVALID_REQUEST saying why not."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"send application/json, not {request.content_type or 'no content type'}", supported=["application/json"]
        )
    try:
        return json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}") from None


async def json_object(request: web.Request) -> dict:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    return body


class TopologyChange(NamedTuple):
    """What a ``PUT /v1/cluster`` asks for: the new topology, and the topics it deletes."""

    topology: Topology
    delete_topics: tuple[str, ...]

    def to_dict(self) -> dict:
        """The request body that asks for this change."""
        return {**self.topology.to_dict(), "delete_topics": list(self.delete_topics)}


async def topology_change(request: web.Request) -> TopologyChange:
    """The topology a ``PUT /v1/cluster`` carries, validated, with its ``delete_topics``
    (topic names, default none), or INVALID_REQUEST saying why not."""
    body = await json_object(request)
    deletes = body.pop("delete_topics", [])
    if not isinstance(deletes, list) or not all(isinstance(name, str) for name in deletes):
        raise InvalidRequest("delete_topics must be a list of topic names", field="delete_topics")
    for name in deletes:
        check_name(name, "delete_topics")
    try:
        topology = Topology.from_dict(body, source="PUT /v1/cluster")
    except TopologyError as exc:
        raise InvalidRequest(f"invalid topology: {exc}", field="topology") from None
    return TopologyChange(topology, tuple(sorted(set(deletes))))
