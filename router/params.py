"""Request parameters shared by the broker and the gateway, checked the same way in both."""

from __future__ import annotations

from aiohttp import web

from shoal.client.errors import InvalidRequest
from shoal.client.names import check_name

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
