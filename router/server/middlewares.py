"""Middlewares of the broker and the gateway: request ids, the one place errors
become problem+json, and load shedding.

Handlers only raise. ``ShoalApiError`` is rendered from ``exc.to_problem()``; aiohttp's
own HTTP errors (unknown path, wrong method, body over the size limit) are mapped to
their codes; anything else is logged with its traceback and answered as INTERNAL 500.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from aiohttp import web

from shoal.client.errors import (
    BatchTooLarge,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ShoalApiError,
    Throttled,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
MAX_BODY = web.AppKey("max_body", int)
request_id: ContextVar[str] = ContextVar("request_id", default="-")
_ids = itertools.count(1)
_prefix = os.urandom(3).hex()
# Cheap routes for probes and scrapers: no token needed, never shed.
PROBES = frozenset({("GET", "/v1/health"), ("GET", "/metrics"), ("GET", "/v1/openapi.json")})


def route_key(request: web.Request) -> tuple[str, str | None]:
    """(method, path template) of the matched route; the template is None when none matched."""
    match = request.match_info
    template = None if match.http_exception is not None else match.route.resource.canonical
    return ("GET" if request.method == "HEAD" else request.method), template


def problem_response(exc: ShoalApiError) -> web.Response:
    headers = exc.headers()
    headers["Shoal-Request-Id"] = request_id.get()
    return web.Response(
        status=exc.http_status,
        body=json.dumps(exc.to_problem()).encode(),
        content_type=PROBLEM_JSON,
        headers=headers,
    )


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> ShoalApiError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app.get(MAX_BODY)
        return BatchTooLarge(f"request body exceeds {limit} bytes", max_bytes=limit)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(
            f"{request.method} is not allowed on {request.path}", allowed=sorted(exc.allowed_methods)
        )
    if isinstance(exc, web.HTTPNotFound):
        return NotFound(f"no such path: {request.path}", path=request.path)
    if isinstance(exc, web.HTTPUnsupportedMediaType):
        return UnsupportedMediaType(exc.text or "unsupported media type", supported=[])
    if exc.status < 500:
        return InvalidRequest(exc.reason or "bad request")
    return InternalError(exc.reason or "internal error")


@web.middleware
async def request_context(request: web.Request, handler):
    """Give every request an id (the caller's ``X-Request-Id`` if it sent one)."""
    rid = request.headers.get("X-Request-Id") or f"{_prefix}-{next(_ids)}"
    request_id.set(rid[:64])
    response = await handler(request)
    response.headers["Shoal-Request-Id"] = rid[:64]
    return response


@web.middleware
async def problem_errors(request: web.Request, handler):
    """Render every failure as RFC 9457 problem+json with a stable code."""
    try:
        return await handler(request)
    except ShoalApiError as exc:
        log.debug("request %s %s %s failed: %s", request_id.get(), request.method, request.path, exc)
        return problem_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(_from_http_exception(request, exc))
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("request %s %s %s failed unexpectedly", request_id.get(), request.method, request.path)
        return problem_response(InternalError("internal error; see the broker log"))


def limit_load(settings: Callable[[], Any]):
    """Shed load with 429 THROTTLED (Retry-After) instead of queueing without bound.

    ``settings()`` gives the current ``Settings`` (re-read per request, so a new
    topology epoch changes the limits): at most ``max_connections`` requests in
    progress, long-polls included, and at most ``max_buffered_bytes`` of request
    bodies held at once. Probes are never counted nor refused.
    """
    in_progress = 0
    buffered = 0

    @web.middleware
    async def limits(request: web.Request, handler):
        nonlocal in_progress, buffered
        if route_key(request) in PROBES:
            return await handler(request)
        current = settings()
        size = 0
        if request.body_exists:
            size = min(request.content_length or current.max_request_bytes, current.max_request_bytes)
        if in_progress >= current.max_connections:
            raise Throttled(
                f"{in_progress} requests in progress, the most this server takes (max_connections)", retry_after=1
            )
        if buffered and buffered + size > current.max_buffered_bytes:
            raise Throttled(
                f"{buffered} bytes of request bodies held, no room for {size} more (max_buffered_bytes)", retry_after=1
            )
        in_progress += 1
        buffered += size
        try:
            return await handler(request)
        finally:
            in_progress -= 1
            buffered -= size

    return limits
