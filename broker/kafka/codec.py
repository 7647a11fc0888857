"""Kafka request and response framing over kio's message types.

kio generates one frozen dataclass per message and version from Kafka's own JSON
schemas, with readers and writers that know each field's wire type; nothing here
describes a message by hand. A request on the wire is::

    size        i32   bytes that follow
    api_key     i16   \
    api_version i16    | the request header (v1; v2 adds tagged fields after client_id,
    correlation i32    | for the flexible versions of an API)
    client_id   i16 length + bytes, or -1
    body              the request of (api_key, api_version)

and a response is ``size``, the response header (``correlation_id``, plus tagged fields
for flexible versions except ApiVersions) and the body. ``build`` fills a response
dataclass of any version from a plain dict, so one handler answers every version it
advertises: fields the version lacks are dropped, fields it has but the dict lacks
take Kafka's implicit defaults.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import struct
import types
import typing
import uuid
from collections.abc import Mapping
from functools import cache
from typing import Any, NamedTuple

from kio.index import load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.serial import entity_reader, entity_writer
from kio.static.primitive import i32Timedelta, i64Timedelta

__all__ = ["KafkaFrameError", "RequestHead", "build", "decode_request", "encode_response", "read_head", "SIZE"]

SIZE = struct.Struct(">i")
_read_head_v1 = entity_reader(RequestHeaderV1)


class KafkaFrameError(ValueError):
    """A request that cannot be parsed: the connection is closed, as Kafka does."""


class RequestHead(NamedTuple):
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None


def read_head(payload: bytes) -> RequestHead:
    """The request header's fixed part (the same in header v1 and v2)."""
    try:
        head, _ = _read_head_v1(payload, 0)
    except Exception as exc:  # kio raises several types for short or bad input
        raise KafkaFrameError(f"unreadable request header: {exc}") from None
    return RequestHead(head.request_api_key, head.request_api_version, head.correlation_id, head.client_id)


def decode_request(payload: bytes, api_key: int, api_version: int) -> Any:
    """The typed request body; raises KafkaFrameError when it does not parse.

    Bytes after the body are ignored, as Kafka's own broker ignores them: librdkafka
    2.x sends three zero bytes after a Metadata request for all topics.
    """
    cls = load_request_schema(api_key, api_version)
    try:
        _, at = entity_reader(cls.__header_schema__)(payload, 0)
        request, _ = entity_reader(cls)(payload, at)
    except Exception as exc:
        raise KafkaFrameError(f"unreadable {cls.__name__} v{api_version}: {exc}") from None
    return request


def encode_response(correlation_id: int, api_key: int, api_version: int, values: Mapping[str, Any]) -> bytes:
    """The size-prefixed response of (api_key, api_version) built from ``values``."""
    cls = load_response_schema(api_key, api_version)
    header_cls = cls.__header_schema__
    buf = io.BytesIO()
    buf.write(b"\0\0\0\0")
    entity_writer(header_cls)(buf, header_cls(correlation_id=correlation_id))
    entity_writer(cls)(buf, build(cls, values))
    out = buf.getbuffer()
    SIZE.pack_into(out, 0, len(out) - 4)
    return bytes(out)


# -- building dataclasses of any version ---------------------------------------------


class _Field(NamedTuple):
    name: str
    kind: str  # "entity", "entities", "error", "ms32", "ms64", "plain"
    nested: type | None
    default: Any  # dataclasses.MISSING when the field has none of its own
    implicit: Any


def _unwrap(tp: Any) -> tuple[Any, bool]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _implicit(tp: Any, optional: bool) -> Any:
    if optional:
        return None
    if typing.get_origin(tp) is tuple:
        return ()
    if tp is ErrorCode:
        return ErrorCode.none
    if isinstance(tp, type):
        if issubclass(tp, bool):
            return False
        if issubclass(tp, datetime.timedelta):
            return tp.parse(datetime.timedelta(0))
        if issubclass(tp, int):
            return 0
        if issubclass(tp, str):
            return ""
        if issubclass(tp, bytes):
            return b""
        if tp is uuid.UUID:
            return uuid.UUID(int=0)
    return None


@cache
def _plan(cls: type) -> tuple[_Field, ...]:
    hints = typing.get_type_hints(cls)
    plan = []
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap(hints[f.name])
        nested = None
        if dataclasses.is_dataclass(tp):
            kind, nested = "entity", tp
        elif typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            kind, nested = "entities", typing.get_args(tp)[0]
        elif tp is ErrorCode:
            kind = "error"
        elif isinstance(tp, type) and issubclass(tp, i32Timedelta):
            kind = "ms32"
        elif isinstance(tp, type) and issubclass(tp, i64Timedelta):
            kind = "ms64"
        else:
            kind = "plain"
        plan.append(_Field(f.name, kind, nested, f.default, _implicit(tp, optional)))
    return tuple(plan)


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of the kio dataclass ``cls`` from ``values``.

    Nested entities are given as dicts (or sequences of dicts), error codes as ints,
    durations as milliseconds. Keys ``cls`` has no field for are ignored; None for a
    field this version cannot hold null in gives its empty value ("" or 0), so one
    dict serves versions before and after a field became nullable.
    """
    kwargs = {}
    for f in _plan(cls):
        if f.name not in values:
            kwargs[f.name] = f.default if f.default is not dataclasses.MISSING else f.implicit
            continue
        value = values[f.name]
        if value is None:
            value = f.implicit  # None where the version may hold null, else the type's empty value
        elif f.kind == "entities":
            value = tuple(build(f.nested, v) for v in value)
        elif f.kind == "entity":
            value = build(f.nested, value)
        elif f.kind == "error":
            value = ErrorCode(int(value))
        elif f.kind == "ms32":
            value = i32Timedelta.parse(datetime.timedelta(milliseconds=value))
        elif f.kind == "ms64":
            value = i64Timedelta.parse(datetime.timedelta(milliseconds=value))
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def millis(value: datetime.timedelta) -> int:
    """A kio duration field in milliseconds."""
    return int(value / datetime.timedelta(milliseconds=1))
