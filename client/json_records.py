"""The JSON form of records in API v1, for people, curl and the CLI (not the fast path).

Produce: ``{"records": [{"key": "k", "value": "v", "headers": {"h": "x"}, "timestamp": ms}]}``
where ``key_b64``/``value_b64`` (and header values given as ``{"b64": "..."}``) carry
arbitrary bytes. Fetch: the same shape with ``offset`` and ``timestamp``; bytes that are
not UTF-8 come back base64-encoded under ``key_b64``/``value_b64``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any

from .errors import InvalidRequest
from .records import encode_batch
from .structs import Record

MAX_JSON_RECORDS = 10_000


def _bytes_field(item: dict, name: str, where: str) -> bytes | None:
    b64 = item.get(f"{name}_b64")
    if b64 is not None:
        if name in item:
            raise InvalidRequest(f"{where}: give {name} or {name}_b64, not both", field=f"{where}.{name}")
        if not isinstance(b64, str):
            raise InvalidRequest(f"{where}.{name}_b64 must be a base64 string", field=f"{where}.{name}_b64")
        try:
            return base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{where}.{name}_b64 is not valid base64", field=f"{where}.{name}_b64") from None
    value = item.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (dict, list, int, float, bool)):
        return json.dumps(value, separators=(",", ":")).encode()
    raise InvalidRequest(f"{where}.{name} must be a string", field=f"{where}.{name}")


def _headers(item: dict, where: str) -> dict[str, bytes] | None:
    raw = item.get("headers")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where}.headers must be an object of name -> string", field=f"{where}.headers")
    out = {}
    for name, value in raw.items():
        if isinstance(value, str):
            out[name] = value.encode()
        elif isinstance(value, dict) and isinstance(value.get("b64"), str):
            try:
                out[name] = base64.b64decode(value["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise InvalidRequest(f"{where}.headers.{name} is not valid base64", field=f"{where}.headers") from None
        else:
            raise InvalidRequest(f"{where}.headers.{name} must be a string", field=f"{where}.headers")
    return out


def parse_records(payload: Any) -> list[tuple[bytes | None, bytes | None, dict | None, int | None]]:
    """Validate a JSON produce body; return ``(key, value, headers, timestamp)`` tuples."""
    if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
        raise InvalidRequest('body must be an object {"records": [...]}', field="records")
    items = payload["records"]
    if not items:
        raise InvalidRequest("records must hold at least one record", field="records")
    if len(items) > MAX_JSON_RECORDS:
        raise InvalidRequest(f"at most {MAX_JSON_RECORDS} records per JSON request", field="records")
    out = []
    for i, item in enumerate(items):
        where = f"records[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"{where} must be an object", field=where)
        unknown = set(item) - {"key", "value", "key_b64", "value_b64", "headers", "timestamp", "partition"}
        if unknown:
            raise InvalidRequest(f"{where} has unknown member(s) {sorted(unknown)}", field=where)
        ts = item.get("timestamp")
        if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 2**62):
            raise InvalidRequest(f"{where}.timestamp must be milliseconds since the epoch", field=f"{where}.timestamp")
        out.append((_bytes_field(item, "key", where), _bytes_field(item, "value", where), _headers(item, where), ts))
    return out


def encode_json_batch(payload: Any) -> bytes:
    return encode_batch(parse_records(payload))


def _put_bytes(out: dict, name: str, value: bytes | None) -> None:
    if value is None:
        out[name] = None
        return
    try:
        out[name] = value.decode()
    except UnicodeDecodeError:
        out[f"{name}_b64"] = base64.b64encode(value).decode()


def record_to_json(record: Record) -> dict:
    out: dict[str, Any] = {"offset": record.offset, "timestamp": record.timestamp}
    _put_bytes(out, "key", record.key)
    _put_bytes(out, "value", record.value)
    headers = {}
    for name, value in (record.headers or {}).items():
        try:
            headers[name] = value.decode()
        except UnicodeDecodeError:
            headers[name] = {"b64": base64.b64encode(value).decode()}
    out["headers"] = headers
    return out


def records_to_json(records: Iterable[Record]) -> list[dict]:
    return [record_to_json(r) for r in records]
