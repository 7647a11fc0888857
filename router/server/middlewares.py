"""Middlewares of the broker and the gateway: request ids, the one place errors
become problem+json, and load shedding.

Handlers only raise. ``ShoalApiError`` is rendered from ``exc.to_problem()``; aiohttp's
own HTTP errors (unknown path, wrong method, body over the size limit) are mapped to
their codes; anything else is logged with its traceback and answered as INTERNAL 500.
"""

from __future__ import annotations

import asyncio
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
    RequestTimeout,
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


LONG_POLL = ("GET", "/v1/topics/{topic}/partitions/{partition}/records")


def _is_long_poll(request: web.Request) -> bool:
    return route_key(request) == LONG_POLL and request.query.get("max_wait_ms", "0") not in ("", "0")


class LoadLimits:
    """Shed load with 429 THROTTLED (Retry-After) instead of queueing without bound.

    ``settings()`` gives the current ``Settings`` (re-read per request, so a new
    topology epoch changes the limits): at most ``max_connections`` requests in
    progress, plus at most ``max_long_polls`` fetches that may wait (their own budget:
    parked consumers never crowd out produce, commits and heartbeats), and at most
    ``max_buffered_bytes`` of request bodies held at once, counted as the bytes
    arrive (a stalled upload holds only what it sent). A body must arrive within
    ``body_timeout_ms``, else 408 REQUEST_TIMEOUT and the connection is closed.
    Probes are never counted nor refused.

    Two middlewares: ``admit`` goes before authentication, ``receive`` after it (so
    the body of a caller without a valid token is never read).
    """

    def __init__(self, settings: Callable[[], Any]):
        self.settings = settings
        self.in_progress = 0
        self.long_polls = 0
        self.buffered = 0

    @web.middleware
    async def admit(self, request: web.Request, handler):
        if route_key(request) in PROBES:
            return await handler(request)
        current = self.settings()
        if _is_long_poll(request):
            if self.long_polls >= current.max_long_polls:
                raise Throttled(
                    f"{self.long_polls} long-polls waiting, the most this server takes (max_long_polls)", retry_after=1
                )
            self.long_polls += 1
            try:
                return await handler(request)
            finally:
                self.long_polls -= 1
        if self.in_progress >= current.max_connections:
            raise Throttled(
                f"{self.in_progress} requests in progress, the most this server takes (max_connections)", retry_after=1
            )
        announced = min(request.content_length or 0, current.max_request_bytes) if request.body_exists else 0
        if self.buffered and self.buffered + announced > current.max_buffered_bytes:
            raise Throttled(
                f"{self.buffered} bytes of request bodies held, no room for {announced} more (max_buffered_bytes)",
                retry_after=1,
            )
        self.in_progress += 1
        try:
            return await handler(request)
        finally:
            self.in_progress -= 1

    @web.middleware
    async def receive(self, request: web.Request, handler):
        if not request.body_exists or route_key(request) in PROBES:
            return await handler(request)
        held = [0]
        try:
            try:
                await self._read(request, self.settings(), held)
            except RequestTimeout as exc:
                # Answer and close at once: aiohttp would otherwise "linger" up to 10 s
                # reading the rest of a body that has stalled.
                response = problem_response(exc)
                response.force_close()
                await response.prepare(request)
                await response.write_eof()
                request.protocol.force_close()
                return response
            return await handler(request)
        finally:
            self.buffered -= held[0]

    async def _read(self, request: web.Request, current: Any, held: list[int]) -> None:
        """Read the whole body within ``body_timeout_ms``, counting its bytes (in
        ``self.buffered`` and ``held[0]``) as they arrive; ``request.read()`` then
        answers from what was read."""
        if (request.content_length or 0) > current.max_request_bytes:
            raise BatchTooLarge(f"request body exceeds {current.max_request_bytes} bytes", max_bytes=current.max_request_bytes)
        chunks = []
        try:
            async with asyncio.timeout(current.body_timeout_ms / 1000):
                while chunk := await request.content.readany():
                    if held[0] + len(chunk) > current.max_request_bytes:
                        raise BatchTooLarge(
                            f"request body exceeds {current.max_request_bytes} bytes", max_bytes=current.max_request_bytes
                        )
                    if self.buffered + len(chunk) > current.max_buffered_bytes:
                        raise Throttled(
                            f"{self.buffered} bytes of request bodies held, no room for more (max_buffered_bytes)",
                            retry_after=1,
                        )
                    self.buffered += len(chunk)
                    held[0] += len(chunk)
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {current.body_timeout_ms} ms (body_timeout_ms); "
                f"{held[0]} bytes came",
                timeout_ms=current.body_timeout_ms,
            ) from None
        request._read_bytes = b"".join(chunks)  # aiohttp's request.read() answers from this cache once set
