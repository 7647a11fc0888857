"""An asyncio etcd v3 client over etcd's JSON gateway (``/v3/kv/*``, ``/v3/lease/*``, ``/v3/watch``).

etcd serves its gRPC API as JSON over HTTP too (the grpc-gateway, ``/v3/`` since 3.4);
Patroni talks to etcd 3 the same way. Keys and values are bytes, base64 in the JSON;
64-bit numbers arrive as strings. See docs/replication.md for why this and not a
gRPC library.

Failover: requests go to the endpoint that answered last; on a connection error, a
timeout or an "unavailable" answer (no leader, leader changed) the next endpoint is
tried, each at most once per call, before ``EtcdUnavailable`` is raised. A write that
timed out may have been applied before it is retried elsewhere, so a compare-and-swap
can report a failed compare for its own earlier success: callers of ``txn`` re-read
after a failed compare (``router.metadata.store`` does).

Task-safe (one aiohttp session, requests independent); ``start()`` opens the session.

Example::

    async with EtcdClient(["http://127.0.0.1:2379"]) as etcd:
        rev = await etcd.put(b"/shoal/x", b"1")
        ok = await etcd.txn([mod_revision_is(b"/shoal/x", rev)], [put_op(b"/shoal/x", b"2")])
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from shoal.router.metadata.config import EtcdTls

__all__ = [
    "EtcdClient",
    "BlockingEtcd",
    "EtcdError",
    "EtcdUnavailable",
    "EtcdRequestError",
    "LeaseNotFound",
    "WatchCompacted",
    "KeyValue",
    "WatchEvent",
    "TxnResult",
    "mod_revision_is",
    "put_op",
    "delete_op",
    "range_op",
    "prefix_end",
]

log = logging.getLogger(__name__)

# gRPC status codes etcd answers with (the gateway sends them as "code").
_NOT_FOUND = 5
_UNAVAILABLE = 14
_DEADLINE_EXCEEDED = 4


class EtcdError(Exception):
    """Base of every error of this client.

    Attributes:
        code: etcd's gRPC status code, or None when etcd did not answer.
        endpoint: the endpoint that answered (or the last one tried).
    """

    def __init__(self, message: str, *, code: int | None = None, endpoint: str = ""):
        super().__init__(message)
        self.code = code
        self.endpoint = endpoint


class EtcdUnavailable(EtcdError):
    """No endpoint answered, or none had a leader: retry later."""


class EtcdRequestError(EtcdError):
    """etcd refused the request (invalid argument, too large, permission...)."""


class LeaseNotFound(EtcdError):
    """The lease expired or was revoked."""


class WatchCompacted(EtcdError):
    """The watch's start revision was compacted; re-read, then watch from ``compact_revision``."""

    def __init__(self, message: str, *, compact_revision: int, endpoint: str = ""):
        super().__init__(message, endpoint=endpoint)
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    """One stored key. Revisions are etcd's: ``mod_revision`` is what a CAS compares."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class WatchEvent:
    """A change seen by a watch: ``type`` is ``PUT`` or ``DELETE`` (a delete's value is empty)."""

    type: str
    kv: KeyValue


@dataclass(frozen=True)
class TxnResult:
    """What a transaction did.

    Attributes:
        succeeded: every compare held, so the success ops ran (else the failure ops).
        revision: the store's revision after the transaction.
        ranges: the key-values of each range op that ran, in order.
    """

    succeeded: bool
    revision: int
    ranges: list[list[KeyValue]]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def mod_revision_is(key: bytes, revision: int) -> dict[str, Any]:
    """Compare: ``key`` was last modified at ``revision`` (0: the key does not exist)."""
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def put_op(key: bytes, value: bytes, *, lease: int = 0) -> dict[str, Any]:
    """Txn op: write ``value`` (attached to ``lease`` when non-zero)."""
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def delete_op(key: bytes) -> dict[str, Any]:
    """Txn op: delete ``key``."""
    return {"request_delete_range": {"key": _b64(key)}}


def range_op(key: bytes, *, prefix: bool = False) -> dict[str, Any]:
    """Txn op: read ``key`` (or every key under it with ``prefix``)."""
    body = {"key": _b64(key)}
    if prefix:
        body["range_end"] = _b64(prefix_end(key))
    return {"request_range": body}


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(raw.get("key", "")),
        value=base64.b64decode(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=int(raw.get("lease", 0)),
    )


def _revision(body: dict[str, Any]) -> int:
    return int(body.get("header", {}).get("revision", 0))


def ssl_context(tls: EtcdTls | None) -> ssl.SSLContext | None:
    """The client TLS context for https:// endpoints (None: aiohttp's default trust)."""
    if tls is None:
        return None
    ctx = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx


class _Endpoints:
    """What both clients share: the endpoints, the one that answered last (tried first),
    and how an endpoint's answer is read."""

    def __init__(self, endpoints: Sequence[str]):
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self._current = 0

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._current + i) % n for i in range(n)]

    def _settle(self, i: int, status: int, answer: dict[str, Any], path: str) -> dict[str, Any]:
        """The answer endpoint ``i`` gave, or its error raised; ``EtcdUnavailable`` means
        the next endpoint may serve the call."""
        endpoint = self.endpoints[i]
        if status == 200 and "error" not in answer:
            self._current = i
            return answer
        error = _error(answer, status, endpoint, path)
        if not isinstance(error, EtcdUnavailable):
            self._current = i
        raise error

    def _lease_ttl(self, body: dict[str, Any], lease: int) -> int:
        """The TTL a keepalive answer gives; etcd answers an unknown lease's with none."""
        ttl = int(body.get("result", {}).get("TTL", 0))
        if ttl <= 0:
            raise LeaseNotFound(f"etcd lease {lease:x} has expired", code=_NOT_FOUND, endpoint=self.endpoints[self._current])
        return ttl


def _error(answer: dict[str, Any], status: int, endpoint: str, path: str) -> EtcdError:
    code = answer.get("code")
    message = f"etcd {endpoint} /v3/{path}: {answer.get('message') or answer.get('error') or f'HTTP {status}'}"
    if code in (_UNAVAILABLE, _DEADLINE_EXCEEDED) or (status >= 500 and code is None):
        return EtcdUnavailable(message, code=code, endpoint=endpoint)
    if code == _NOT_FOUND and "lease" in message:
        return LeaseNotFound(message, code=code, endpoint=endpoint)
    return EtcdRequestError(message, code=code, endpoint=endpoint)


class EtcdClient(_Endpoints):
    """A client of one etcd cluster, given its client endpoints.

    Args:
        endpoints: client URLs (``http://host:2379``, ``https://...``), tried in order.
        tls: CA and client certificate for https:// endpoints.
        request_timeout_s: the longest one request to one endpoint may take before the
            next endpoint is tried.
    """

    def __init__(self, endpoints: Sequence[str], *, tls: EtcdTls | None = None, request_timeout_s: float = 2.0):
        super().__init__(endpoints)
        self.tls = tls
        self.request_timeout_s = request_timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=ssl_context(self.tls) or True)
            self._session = aiohttp.ClientSession(connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> EtcdClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- transport -----------------------------------------------------------

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on the first endpoint that answers.

        Raises:
            EtcdUnavailable: no endpoint answered or had a leader.
            LeaseNotFound: the request named an expired or revoked lease.
            EtcdRequestError: etcd refused the request.
        """
        if self._session is None:
            raise RuntimeError("EtcdClient.start() was not called")
        data = json.dumps(body)
        last: EtcdError | None = None
        for i in self._order():
            endpoint = self.endpoints[i]
            try:
                status, raw = await self._post(f"{endpoint}/v3/{path}", data)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = EtcdUnavailable(f"etcd {endpoint}: {type(exc).__name__}: {exc}", endpoint=endpoint)
                log.debug("etcd %s /v3/%s failed: %r; trying the next endpoint", endpoint, path, exc)
                continue
            try:
                answer = json.loads(raw)
            except ValueError:
                last = EtcdUnavailable(f"etcd {endpoint}: HTTP {status}, not JSON: {raw[:200]!r}", endpoint=endpoint)
                continue
            try:
                return self._settle(i, status, answer, path)
            except EtcdUnavailable as exc:
                last = exc
        assert last is not None
        raise last

    async def _post(self, url: str, data: str) -> tuple[int, bytes]:
        try:
            return await self._post_once(url, data)
        except aiohttp.ServerDisconnectedError:
            # A pooled connection to an etcd that restarted fails once: retry on a new one.
            return await self._post_once(url, data)

    async def _post_once(self, url: str, data: str) -> tuple[int, bytes]:
        assert self._session is not None
        async with asyncio.timeout(self.request_timeout_s):
            async with self._session.post(url, data=data) as resp:
                return resp.status, await resp.read()

    async def healthy(self) -> bool:
        """Whether some endpoint reports itself healthy (``GET /health``: it has a leader)."""
        assert self._session is not None, "EtcdClient.start() was not called"
        for endpoint in self.endpoints:
            try:
                async with asyncio.timeout(self.request_timeout_s):
                    async with self._session.get(f"{endpoint}/health") as resp:
                        if (await resp.json(content_type=None)).get("health") == "true":
                            return True
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, AttributeError):
                continue
        return False

    # -- keys ----------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        """The key's current value and revisions, or None when it does not exist."""
        body = await self.call("kv/range", {"key": _b64(key)})
        kvs = body.get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    async def range(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix`` in key order, and the revision read at."""
        body = await self.call("kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return [_kv(raw) for raw in body.get("kvs", [])], _revision(body)

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        """Write ``key`` (attached to ``lease`` when non-zero); returns the new revision.

        Raises:
            LeaseNotFound: ``lease`` has expired or was revoked.
        """
        body = await self.call("kv/put", put_op(key, value, lease=lease)["request_put"])
        return _revision(body)

    async def delete(self, key: bytes, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it with ``prefix``); returns how many went."""
        request = {"key": _b64(key)}
        if prefix:
            request["range_end"] = _b64(prefix_end(key))
        body = await self.call("kv/deleterange", request)
        return int(body.get("deleted", 0))

    async def txn(
        self, compare: Sequence[dict[str, Any]], success: Sequence[dict[str, Any]], failure: Sequence[dict[str, Any]] = ()
    ) -> TxnResult:
        """One atomic transaction: if every ``compare`` holds run ``success``, else ``failure``.

        Build the parts with ``mod_revision_is``, ``put_op``, ``delete_op`` and ``range_op``.
        """
        body = await self.call("kv/txn", {"compare": list(compare), "success": list(success), "failure": list(failure)})
        ranges = [
            [_kv(raw) for raw in r["response_range"].get("kvs", [])]
            for r in body.get("responses", [])
            if "response_range" in r
        ]
        return TxnResult(bool(body.get("succeeded", False)), _revision(body), ranges)

    # -- leases --------------------------------------------------------------

    async def grant(self, ttl_s: int) -> tuple[int, int]:
        """A new lease of ``ttl_s`` seconds: ``(lease id, the TTL etcd granted)``."""
        body = await self.call("lease/grant", {"TTL": str(ttl_s)})
        return int(body["ID"]), int(body.get("TTL", ttl_s))

    async def keepalive(self, lease: int) -> int:
        """Renew ``lease`` once; returns its TTL in seconds from now.

        Raises:
            LeaseNotFound: the lease has expired or was revoked.
        """
        return self._lease_ttl(await self.call("lease/keepalive", {"ID": str(lease)}), lease)

    async def time_to_live(self, lease: int) -> int:
        """Seconds ``lease`` has left, or -1 when it has expired or never existed."""
        body = await self.call("lease/timetolive", {"ID": str(lease)})
        return int(body.get("TTL", -1))

    async def revoke(self, lease: int) -> None:
        """End ``lease`` now, deleting every key attached to it. An expired lease is fine."""
        try:
            await self.call("lease/revoke", {"ID": str(lease)})
        except LeaseNotFound:
            pass

    # -- watch ---------------------------------------------------------------

    async def watch(self, prefix: bytes, *, start_revision: int = 0) -> AsyncIterator[list[WatchEvent]]:
        """Yield the changes under ``prefix``, one list per etcd revision batch, forever.

        ``start_revision`` 0 watches from now; otherwise changes from that revision on
        are replayed first (read with ``range`` then watch from its revision + 1 to miss
        nothing). A broken stream is resumed on the next endpoint after the last
        revision seen, so no event is lost or repeated.

        Raises:
            WatchCompacted: ``start_revision`` (or the resume point) was compacted away.
            EtcdUnavailable: no endpoint accepted the watch.
        """
        if self._session is None:
            raise RuntimeError("EtcdClient.start() was not called")
        request: dict[str, Any] = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        next_revision = start_revision
        while True:
            failures: list[str] = []
            for i in self._order():
                endpoint = self.endpoints[i]
                if next_revision:
                    request["start_revision"] = str(next_revision)
                answered = False
                try:
                    async for revision, events in self._stream(endpoint, request):
                        answered = True
                        self._current = i
                        if not next_revision:
                            # Watching "from now": a resumed stream must start where this one did.
                            next_revision = revision + 1
                        if events:
                            next_revision = events[-1].kv.mod_revision + 1
                            yield events
                except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                    failures.append(f"{endpoint}: {type(exc).__name__}: {exc}")
                    log.debug("etcd watch on %s broke: %r; resuming at revision %d", endpoint, exc, next_revision)
                if answered:
                    break  # it worked until now: start over from the endpoint that answered
            else:
                raise EtcdUnavailable("etcd watch: no endpoint answered (" + "; ".join(failures) + ")", endpoint=endpoint)
            await asyncio.sleep(0.1)

    async def _stream(self, endpoint: str, request: dict[str, Any]) -> AsyncIterator[tuple[int, list[WatchEvent]]]:
        """One watch stream: its JSON messages, newline-separated, as (header revision, events)."""
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=None, connect=self.request_timeout_s, sock_read=None)
        body = json.dumps({"create_request": request})
        async with self._session.post(f"{endpoint}/v3/watch", data=body, timeout=timeout) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status, message=await resp.text())
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        yield self._watch_message(json.loads(line), endpoint)
            raise aiohttp.ServerDisconnectedError("watch stream ended")

    @staticmethod
    def _watch_message(message: dict[str, Any], endpoint: str) -> tuple[int, list[WatchEvent]]:
        if "error" in message:
            raise aiohttp.ClientPayloadError(str(message["error"]))
        result = message.get("result", {})
        compacted = int(result.get("compact_revision", 0))
        if compacted:
            raise WatchCompacted(
                f"etcd {endpoint}: watch start revision compacted (oldest kept: {compacted})",
                compact_revision=compacted,
                endpoint=endpoint,
            )
        if result.get("canceled"):
            raise aiohttp.ClientPayloadError(f"watch canceled: {result.get('cancel_reason', '')}")
        return _revision(result), [WatchEvent(e.get("type", "PUT"), _kv(e["kv"])) for e in result.get("events", [])]


class BlockingEtcd(_Endpoints):
    """A blocking client of the few etcd calls a thread of its own makes (lease renewals).

    One ``http.client`` connection per endpoint, kept open; the endpoint that answered
    last is tried first, the others once each per call, as in ``EtcdClient``. Not
    task- or thread-safe: one thread uses it (``BrokerLease``'s renewer).
    """

    def __init__(self, endpoints: Sequence[str], *, tls: EtcdTls | None = None, request_timeout_s: float = 2.0):
        super().__init__(endpoints)
        self.request_timeout_s = request_timeout_s
        self._ssl = ssl_context(tls) if any(e.startswith("https://") for e in self.endpoints) else None
        self._conns: dict[int, http.client.HTTPConnection] = {}

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _conn(self, i: int, timeout_s: float) -> http.client.HTTPConnection:
        conn = self._conns.get(i)
        if conn is None:
            url = urllib.parse.urlsplit(self.endpoints[i])
            if url.scheme == "https":
                conn = http.client.HTTPSConnection(url.hostname, url.port or 443, timeout=timeout_s, context=self._ssl or ssl.create_default_context())
            else:
                conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout_s)
            self._conns[i] = conn
        conn.timeout = timeout_s
        if conn.sock is not None:
            conn.sock.settimeout(timeout_s)
        return conn

    def _drop(self, i: int) -> None:
        conn = self._conns.pop(i, None)
        if conn is not None:
            conn.close()

    def _post(self, i: int, path: str, data: bytes, timeout_s: float) -> tuple[int, bytes]:
        conn = self._conn(i, timeout_s)
        conn.request("POST", f"/v3/{path}", body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()

    def call(self, path: str, body: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>``; raises as ``EtcdClient.call`` does."""
        timeout_s = min(timeout_s or self.request_timeout_s, self.request_timeout_s)
        data = json.dumps(body).encode()
        last: EtcdError | None = None
        for i in self._order():
            endpoint = self.endpoints[i]
            try:
                try:
                    status, raw = self._post(i, path, data, timeout_s)
                except (ConnectionError, http.client.RemoteDisconnected):
                    # A kept-open connection the server has closed fails once: retry on a new one.
                    self._drop(i)
                    status, raw = self._post(i, path, data, timeout_s)
                answer = json.loads(raw)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._drop(i)
                last = EtcdUnavailable(f"etcd {endpoint}: {type(exc).__name__}: {exc}", endpoint=endpoint)
                continue
            try:
                return self._settle(i, status, answer, path)
            except EtcdUnavailable as exc:
                last = exc
        assert last is not None
        raise last

    def keepalive(self, lease: int, *, timeout_s: float | None = None) -> int:
        """Renew ``lease`` once; its TTL in seconds from now. Raises ``LeaseNotFound`` when it is gone."""
        return self._lease_ttl(self.call("lease/keepalive", {"ID": str(lease)}, timeout_s=timeout_s), lease)
