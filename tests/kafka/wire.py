"""A bare Kafka protocol client for tests: kio-encoded requests over a blocking socket."""

from __future__ import annotations

import io
import socket
import struct

from kio.index import load_response_schema
from kio.schema.request_header.v1.header import RequestHeader as HeaderV1
from kio.schema.request_header.v2.header import RequestHeader as HeaderV2
from kio.serial import entity_reader, entity_writer

from shoal.broker.kafka.codec import build


def request_bytes(request, correlation_id: int = 7) -> bytes:
    header_cls = request.__header_schema__
    header = (HeaderV2 if header_cls is HeaderV2 else HeaderV1)(
        request_api_key=request.__api_key__, request_api_version=request.__version__,
        correlation_id=correlation_id, client_id="wire-test",
    )
    buf = io.BytesIO()
    entity_writer(type(header))(buf, header)
    entity_writer(type(request))(buf, request)
    return struct.pack(">i", buf.tell()) + buf.getvalue()


def read_frame(sock: socket.socket) -> bytes | None:
    """One size-prefixed response, or None when the broker closed the connection."""
    head = _exactly(sock, 4)
    if head is None:
        return None
    return _exactly(sock, struct.unpack(">i", head)[0])


def _exactly(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def decode_response(payload: bytes, api_key: int, version: int):
    cls = load_response_schema(api_key, version)
    header, at = entity_reader(cls.__header_schema__)(payload, 0)
    body, _ = entity_reader(cls)(payload, at)
    return header.correlation_id, body


def call(address: tuple[str, int], request_cls, values: dict, *, timeout: float = 10.0):
    """Send one request built from ``values``; returns the decoded response body."""
    request = build(request_cls, values)
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(request_bytes(request))
        payload = read_frame(sock)
    assert payload is not None, "the broker closed the connection"
    return decode_response(payload, request.__api_key__, request.__version__)[1]
