"""The HTTP calls of API v1, one method per call: typed errors out, plain values back.

This is the layer between the wire format (``records``, ``errors``) and the routing
of ``cluster``, ``producer`` and ``consumer``: it knows paths, media types and how a
failure looks on the wire, and nothing of owners or retries. Every failure is a
``ShoalError``: a problem+json answer becomes its typed class
(``ShoalError.from_problem``), a refused or dropped connection ``BrokerUnreachable``,
and a request that outlives its time-out ``ShoalTimeoutError``; callers decide with
``exc.retriable`` and ``exc.refresh_topology``.
"""

from __future__ import annotations

import json
import logging
import ssl
from typing import Any, NamedTuple

import aiohttp

from .errors import BrokerUnreachable, ShoalError, ShoalTimeoutError, Throttled
from .structs import OffsetAndMetadata

__all__ = ["BATCH_TYPE", "BrokerClient", "FetchResult"]

log = logging.getLogger(__name__)

BATCH_TYPE = "application/vnd.shoal.batch"
_PRODUCE_HEADERS = {"Content-Type": BATCH_TYPE}
_FETCH_HEADERS = {"Accept": BATCH_TYPE}


CLUSTER_TIMEOUT_S = 5.0  # GET /v1/cluster, however long produce requests may take


class FetchResult(NamedTuple):
    """One fetch answer: stored frames byte for byte, and the partition's bounds."""

    body: bytes
    high_watermark: int
    log_start_offset: int


def _partition_path(topic: str, partition: int) -> str:
    return f"/v1/topics/{topic}/partitions/{partition}"


def _committed_path(group: str, topic: str, partition: int) -> str:
    return f"/v1/groups/{group}/topics/{topic}/partitions/{partition}/offset"


class BrokerClient:
    """One kept-alive aiohttp session for every broker of a cluster.

    aiohttp pools connections per host, so the single session keeps one pool per
    broker. Not thread-safe: use it from the event loop that called ``start()``.
    Callers bound their own concurrency (in-flight produce requests, fetches).

    Args:
        request_timeout_ms: how long one request may take, long-polls excluded
            (a fetch gets its ``max_wait_ms`` on top).
        token: sent as ``Authorization: Bearer <token>`` on every request.
        ssl_context: for ``https://`` brokers, e.g. one that trusts the cluster's CA;
            None verifies against the system's CAs.
    """

    def __init__(
        self,
        *,
        request_timeout_ms: int = 30_000,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self._timeout = request_timeout_ms / 1000
        self._headers = {"Authorization": f"Bearer {token}"} if token else None
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def start(self) -> None:
        """Open the session (again, after ``close()``); calls made before open it too."""
        self._closed = False
        if self._session is None:
            # limit=0: concurrency is bounded by the producer and consumer, not here.
            connector = aiohttp.TCPConnector(
                limit=0, ttl_dns_cache=300, ssl=self._ssl if self._ssl is not None else True
            )
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)

    async def close(self) -> None:
        """Close the session; later calls raise until ``start()`` opens it again."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def _call(
        self,
        method: str,
        url: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        json_body: Any = None,
        timeout: float | None = None,
    ) -> tuple[bytes, Any]:
        """Send one request; return (body, response headers) of a 2xx answer or raise."""
        if self._session is None:
            if self._closed:
                raise ShoalError(f"{method} {url}{path}: the client is closed")
            await self.start()
        timeout = self._timeout if timeout is None else timeout
        try:
            async with self._session.request(
                method,
                url + path,
                params=params,
                headers=headers,
                data=data,
                json=json_body,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                body = await resp.read()
                status, resp_headers = resp.status, resp.headers
        except TimeoutError as exc:
            raise ShoalTimeoutError(f"{method} {url}{path} got no answer within {timeout:g}s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise BrokerUnreachable(url, str(exc) or type(exc).__name__) from exc
        if status >= 400:
            err = ShoalError.from_problem(body, status=status)
            if isinstance(err, Throttled) and err.retry_after is None:
                err.retry_after = _retry_after(resp_headers.get("Retry-After"))
            raise err
        return body, resp_headers

    async def request_json(self, method: str, url: str, path: str, **kwargs: Any) -> Any:
        """Any JSON call of the API (``json_body=``, ``params=``, ``timeout=``): the parsed answer.

        For calls without a method of their own here (admin, group membership).
        """
        body, _ = await self._call(method, url, path, **kwargs)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise BrokerUnreachable(url, f"{method} {path} answered with non-JSON {body[:80]!r}") from exc


    async def cluster(self, url: str) -> dict[str, Any]:
        """``GET /v1/cluster``: the topology this broker has installed. A small answer, so a
        broker that has not given it within a few seconds is skipped for the next one."""
        return await self.request_json("GET", url, "/v1/cluster", timeout=min(self._timeout, CLUSTER_TIMEOUT_S))

    async def produce(self, url: str, topic: str, partition: int, frames: bytes, *, acks: str = "all") -> dict[str, Any]:
        """Append ``frames``; ``{"base_offset", "count", "duplicate"}`` once written (``acks``)."""
        return await self.request_json(
            "POST", url, _partition_path(topic, partition) + "/records", headers=_PRODUCE_HEADERS, data=frames,
            params={"acks": acks},
        )

    async def fetch(
        self, url: str, topic: str, partition: int, offset: int, *, max_bytes: int, max_wait_ms: int
    ) -> FetchResult:
        """Stored frames from the one holding ``offset``; empty when nothing came within the wait."""
        body, headers = await self._call(
            "GET",
            url,
            _partition_path(topic, partition) + "/records",
            params={"offset": offset, "max_bytes": max_bytes, "max_wait_ms": max_wait_ms},
            headers=_FETCH_HEADERS,
            timeout=self._timeout + max_wait_ms / 1000,
        )
        return FetchResult(
            body,
            int(headers.get("Shoal-High-Watermark", -1)),
            int(headers.get("Shoal-Log-Start-Offset", -1)),
        )

    async def offsets(self, url: str, topic: str, partition: int, *, timestamp: int | None = None) -> dict[str, Any]:
        """``{"log_start_offset", "high_watermark"}``, plus ``"offset"`` for a ``timestamp``."""
        params = None if timestamp is None else {"timestamp": timestamp}
        return await self.request_json("GET", url, _partition_path(topic, partition) + "/offsets", params=params)

    async def committed(self, url: str, group: str, topic: str, partition: int) -> OffsetAndMetadata | None:
        """The group's committed offset, or None when it never committed here."""
        body = await self.request_json("GET", url, _committed_path(group, topic, partition))
        if body.get("offset") is None:
            return None
        return OffsetAndMetadata(body["offset"], body.get("metadata") or "")

    async def commit(
        self, url: str, group: str, topic: str, partition: int, offset: OffsetAndMetadata,
        *, member: dict[str, Any] | None = None,
    ) -> None:
        """Store ``offset`` as the group's committed offset (durable once this returns).

        ``member``: ``{"member_id", "generation"}`` of a subscribed consumer, checked by
        the group's coordinator (ILLEGAL_GENERATION / UNKNOWN_MEMBER_ID when fenced).
        """
        await self.request_json(
            "PUT",
            url,
            _committed_path(group, topic, partition),
            json_body={"offset": offset.offset, "metadata": offset.metadata, **(member or {})},
        )


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0

