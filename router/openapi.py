"""The OpenAPI 3.1 document of HTTP API v1, served by brokers and the gateway at
``GET /v1/openapi.json``. It is built here once so both servers describe the same API.
"""

from __future__ import annotations

from typing import Any

from shoal.client.errors import ShoalApiError, error_for_code

NAME = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,249}$"}
INT = {"type": "integer", "minimum": 0}
BATCH = "application/vnd.shoal.batch"

_PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
    },
    "additionalProperties": True,
}

_RECORD_IN = {
    "type": "object",
    "properties": {
        "key": {"type": ["string", "null"]},
        "value": {"type": ["string", "null"]},
        "key_b64": {"type": "string"},
        "value_b64": {"type": "string"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "timestamp": INT,
    },
    "additionalProperties": False,
}

_RECORD_OUT = {
    "type": "object",
    "required": ["offset", "timestamp", "headers"],
    "properties": {
        "offset": INT,
        "timestamp": {"type": "integer"},
        "key": {"type": ["string", "null"]},
        "value": {"type": ["string", "null"]},
        "key_b64": {"type": "string"},
        "value_b64": {"type": "string"},
        "headers": {"type": "object"},
    },
}

_GROUP = {
    "type": "object",
    "required": ["group", "partitions"],
    "properties": {
        "group": {"type": "string"},
        "broker_id": {"type": "integer"},
        "partitions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "topic": {"type": "string"},
                    "partition": INT,
                    "offset": INT,
                    "metadata": {"type": "string"},
                    "high_watermark": {"type": ["integer", "null"]},
                    "lag": {"type": ["integer", "null"]},
                },
            },
        },
    },
}


def _param(name: str, where: str = "path", schema: dict | None = None, required: bool | None = None) -> dict:
    return {
        "name": name,
        "in": where,
        "required": where == "path" if required is None else required,
        "schema": schema or (NAME if name in ("topic", "group") else INT),
    }


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _errors(*codes: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for code in codes + ("INVALID_REQUEST", "INTERNAL"):
        cls: type[ShoalApiError] = error_for_code(code)
        desc = out.setdefault(str(cls.http_status), {"description": "", "content": {"application/problem+json": {"schema": _PROBLEM}}})
        desc["description"] = ", ".join(filter(None, [desc["description"], code]))
    return out


def _op(summary: str, ok: dict, *codes: str, params=(), body: dict | None = None) -> dict:
    op: dict[str, Any] = {"summary": summary, "parameters": list(params), "responses": {"200": ok, **_errors(*codes)}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    return op


_PART = [_param("topic"), _param("partition")]
_PART_ERRORS = ("UNKNOWN_TOPIC", "UNKNOWN_PARTITION", "NOT_OWNER")


def build_openapi(title: str = "shoal") -> dict[str, Any]:
    watermarks = {"log_start_offset": INT, "high_watermark": INT}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{title} HTTP API", "version": "1"},
        "paths": {
            "/v1/topics/{topic}/partitions/{partition}/records": {
                "post": _op(
                    "Append records (JSON or framed batches)",
                    {"description": "written under the topic's flush policy", "content": _json({
                        "type": "object", "required": ["base_offset", "count"],
                        "properties": {"base_offset": INT, "count": INT, "duplicate": {"type": "boolean"}}})},
                    *_PART_ERRORS, "CORRUPT_BATCH", "BATCH_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE", "THROTTLED",
                    "DUPLICATE_SEQUENCE", "STORAGE_FULL",
                    params=_PART,
                    body={
                        "application/json": {"schema": {"type": "object", "required": ["records"], "properties": {
                            "records": {"type": "array", "minItems": 1, "items": _RECORD_IN}}}},
                        BATCH: {"schema": {"type": "string", "format": "binary"}},
                    },
                ),
                "get": _op(
                    "Read records from an offset (long-poll with max_wait_ms)",
                    {"description": "records at or after offset", "content": {
                        **_json({"type": "object", "required": ["records", "high_watermark", "log_start_offset"],
                                 "properties": {"records": {"type": "array", "items": _RECORD_OUT}, **watermarks}}),
                        BATCH: {"schema": {"type": "string", "format": "binary"}}}},
                    *_PART_ERRORS, "OFFSET_OUT_OF_RANGE", "NOT_ACCEPTABLE",
                    params=_PART + [
                        _param("offset", "query", INT, False),
                        _param("max_bytes", "query", {"type": "integer", "minimum": 1}, False),
                        _param("max_wait_ms", "query", INT, False),
                    ],
                ),
            },
            "/v1/topics/{topic}/partitions/{partition}/offsets": {
                "get": _op(
                    "Log start offset and high watermark (and the offset for a timestamp)",
                    {"description": "offsets", "content": _json({"type": "object", "properties": {
                        **watermarks, "offset": {"type": ["integer", "null"]}}})},
                    *_PART_ERRORS, params=_PART + [_param("timestamp", "query", INT, False)],
                ),
            },
            "/v1/groups/{group}/topics/{topic}/partitions/{partition}/offset": {
                "get": _op(
                    "Where a reader of this group should resume",
                    {"description": "committed offset", "content": _json({"type": "object", "properties": {
                        "offset": {"type": ["integer", "null"]}, "metadata": {"type": "string"}, **watermarks}})},
                    *_PART_ERRORS, params=[_param("group")] + _PART,
                ),
                "put": _op(
                    "Commit an offset for this group",
                    {"description": "committed", "content": _json({"type": "object"})},
                    *_PART_ERRORS, "OFFSET_OUT_OF_RANGE", "UNSUPPORTED_MEDIA_TYPE",
                    params=[_param("group")] + _PART,
                    body=_json({"type": "object", "required": ["offset"], "properties": {
                        "offset": INT, "metadata": {"type": "string", "maxLength": 4096}}}),
                ),
            },
            "/v1/groups": {"get": _op("Groups with committed offsets here", {"description": "groups", "content": _json(
                {"type": "object", "properties": {"groups": {"type": "array", "items": _GROUP}}})})},
            "/v1/groups/{group}": {
                "get": _op("Committed offsets and lag of one group", {"description": "group", "content": _json(_GROUP)},
                           params=[_param("group")]),
                "delete": _op("Forget a group's committed offsets", {"description": "deleted", "content": _json(
                    {"type": "object"})}, params=[_param("group")]),
            },
            "/v1/cluster": {
                "get": _op("The installed topology and partition owners", {"description": "topology", "content": _json(
                    {"type": "object", "required": ["cluster", "epoch", "brokers", "topics", "owners"]})}),
                "put": _op("Install a newer topology (admin)", {"description": "installed", "content": _json(
                    {"type": "object"})}, "STALE_EPOCH", "TOPOLOGY_CONFLICT", "UNSUPPORTED_MEDIA_TYPE",
                    body=_json({"type": "object"})),
            },
            "/v1/health": {"get": _op("Liveness and epoch", {"description": "serving", "content": _json(
                {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}})})},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
                "description": "OpenAPI 3.1", "content": _json({"type": "object"})}}}},
        },
    }
