"""The Kafka protocol listener of one broker: an asyncio server on the broker's loop.

At most ``settings.max_connections`` client connections are open at once; one more is
closed as it arrives. Each connection is served in order, as Kafka does: requests are read as they come
(clients may pipeline any number), handled one at a time, and answered in the order
they arrived with their correlation ids. A request larger than ``max_request_bytes``,
a header or body that does not parse, or an API key or version the listener does not
serve closes that connection (an ApiVersions request of an unknown version is answered
with the v0 error response that lists the supported ranges instead, so clients can
retry with a version the broker knows). With ``auth:`` a connection authenticates
first (``sasl``); with ``tls:`` the listener speaks TLS, with the broker's certificate
and key from cluster.yaml. A handler that fails unexpectedly is logged and
closes its connection; nothing a client sends stops the listener or the broker.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from kio.schema.errors import ErrorCode

from shoal.broker.broker import Broker
from shoal.broker.kafka import data, group_api, metadata, sasl
from shoal.broker.kafka.codec import SIZE, KafkaFrameError, decode_request, encode_response, read_head
from shoal.broker.kafka.groups import ClassicGroups
from shoal.router.server.auth import Principal
from shoal.router.server.tls import client_context, server_context

log = logging.getLogger(__name__)

API_VERSIONS = 18

#: api_key -> (min version, max version, handler), as advertised by ApiVersions.
HANDLERS: dict[int, tuple[int, int, Any]] = {
    **metadata.APIS,
    **data.APIS,
    **group_api.APIS,
    **sasl.APIS,
}


async def _api_versions(conn: Connection, request: Any, version: int) -> dict:
    return {"error_code": 0, "api_keys": supported_ranges(), "throttle_time": 0}


HANDLERS[API_VERSIONS] = (0, 3, _api_versions)


def supported_ranges() -> list[dict]:
    return [{"api_key": k, "min_version": lo, "max_version": hi} for k, (lo, hi, _) in sorted(HANDLERS.items())]


class Connection:
    """One client connection: what handlers know of who is asking."""

    def __init__(self, listener: KafkaListener, peer: str):
        self.listener = listener
        self.broker = listener.broker
        self.peer = peer
        self.client_id: str | None = None
        self.mechanism: str | None = None  # the SASL mechanism of a handshake
        self.principal: Principal | None = None  # once authenticated
        self.token: str | None = None  # the principal's token, for calls to other brokers on its behalf
        self.raw_sasl = False  # after a SaslHandshake v0: the next frame is a bare PLAIN message
        self.close_after = False  # close once the response is sent (a failed authentication)

    def peer_headers(self) -> dict[str, str] | None:
        """Headers of an HTTP call to another broker made for this client: its token, so
        the other broker applies the same principal's permissions."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else None


class KafkaListener:
    """Serves Kafka clients for ``broker`` on ``host:port`` (its ``kafka:`` address).

    ``start()`` binds, ``stop()`` closes the server and every connection. Runs on the
    loop that called ``start()``; not safe across threads.
    """

    def __init__(self, broker: Broker, host: str, port: int):
        self.broker = broker
        self.host = host
        self.port = port
        self.groups = ClassicGroups()
        self.peers: aiohttp.ClientSession | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        if self._server is not None:
            return
        tls = self.broker.topology.tls
        ssl = server_context(tls.cert_file, tls.key_file) if tls is not None else None
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=ssl)
        self.peers = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10, sock_connect=3),
            connector=aiohttp.TCPConnector(ssl=client_context(tls.ca_file if tls else None) or True),
        )
        await self.groups.start()
        auth = "SASL/PLAIN" if self.broker.topology.auth is not None else "no authentication"
        log.info("broker %d: Kafka listener on %s:%d (%s, %s)", self.broker.broker_id, self.host, self.port,
                 "TLS" if ssl else "plain TCP", auth)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        await self.groups.stop()
        if self.peers is not None:
            await self.peers.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = Connection(self, f"{peer[0]}:{peer[1]}" if peer else "?")
        limit = self.broker.topology.settings.max_connections
        if len(self._tasks) >= limit:
            log.warning("kafka %s: %d connections open (max_connections): closing", conn.peer, limit)
            writer.close()
            return
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            while True:
                try:
                    (size,) = SIZE.unpack(await reader.readexactly(4))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                limit = self.broker.topology.settings.max_request_bytes
                if not 8 <= size <= limit:
                    log.warning("kafka %s: request of %d bytes (limit %d): closing", conn.peer, size, limit)
                    return
                try:
                    payload = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if conn.raw_sasl:
                    conn.raw_sasl = False
                    if not sasl.authenticate(conn, payload):
                        return
                    response = SIZE.pack(0)
                else:
                    response = await self._handle(conn, payload)
                if response is False:
                    return
                if response:
                    writer.write(response)
                    await writer.drain()
                if conn.close_after:
                    return
        except asyncio.CancelledError:
            pass
        except ConnectionError:
            pass
        except Exception:
            log.exception("kafka %s: connection failed", conn.peer)
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _handle(self, conn: Connection, payload: bytes) -> bytes | bool | None:
        """The response bytes; None when none is due (acks=0); False to close."""
        try:
            head = read_head(payload)
        except KafkaFrameError as exc:
            log.warning("kafka %s: %s: closing", conn.peer, exc)
            return False
        conn.client_id = head.client_id
        entry = HANDLERS.get(head.api_key)
        if entry is None:
            log.warning("kafka %s: unknown or unsupported API key %d: closing", conn.peer, head.api_key)
            return False
        low, high, handler = entry
        if not low <= head.api_version <= high:
            if head.api_key == API_VERSIONS:
                return encode_response(
                    head.correlation_id, API_VERSIONS, 0,
                    {"error_code": int(ErrorCode.unsupported_version), "api_keys": supported_ranges()},
                )
            log.warning("kafka %s: API %d v%d is not supported: closing", conn.peer, head.api_key, head.api_version)
            return False
        if conn.principal is None and self.broker.topology.auth is not None and head.api_key not in sasl.OPEN_APIS:
            log.warning("kafka %s: API %d before SASL authentication: closing", conn.peer, head.api_key)
            return False
        try:
            request = decode_request(payload, head.api_key, head.api_version)
        except KafkaFrameError as exc:
            log.warning("kafka %s: %s: closing", conn.peer, exc)
            return False
        log.debug("kafka %s: %s v%d", conn.peer, type(request).__name__, head.api_version)
        values = await handler(conn, request, head.api_version)
        if values is None:
            return None
        return encode_response(head.correlation_id, head.api_key, head.api_version, values)
