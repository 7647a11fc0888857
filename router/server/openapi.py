"""The OpenAPI 3.1 document of HTTP API v1, served by brokers and the gateway at
``GET /v1/openapi.json``. It is built here once so both servers describe the same API.
"""

from __future__ import annotations

from typing import Any

from shoal.client.errors import ShoalApiError, error_for_code

NAME = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,249}$", "not": {"enum": [".", ".."]}}
INT = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
PARTITION = {"type": "integer", "minimum": 0, "maximum": 999_999_999}
BATCH = "application/vnd.shoal.batch"
_B64 = {
    "type": "string",
    "contentEncoding": "base64",
    "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
}

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

_HEADER_VALUE = {
    "oneOf": [
        {"type": "string"},
        {"type": "object", "required": ["b64"], "properties": {"b64": _B64}},
    ]
}
_ANY_JSON = {"description": "a string is stored as UTF-8; any other JSON value as its compact JSON text"}

_RECORD_IN = {
    "type": "object",
    "properties": {
        "key": _ANY_JSON,
        "value": _ANY_JSON,
        "key_b64": _B64,
        "value_b64": _B64,
        "headers": {"type": ["object", "null"], "additionalProperties": _HEADER_VALUE},
        "timestamp": {"type": ["integer", "null"], "minimum": 0, "maximum": 2**62 - 1},
        "partition": {"description": "read by the gateway's POST /v1/topics/{topic}/records; ignored here"},
    },
    "additionalProperties": False,
    "allOf": [{"not": {"required": ["key", "key_b64"]}}, {"not": {"required": ["value", "value_b64"]}}],
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
        "headers": {"type": "object", "additionalProperties": _HEADER_VALUE},
    },
}

_TOPOLOGY_IN = {
    "type": "object",
    "required": ["brokers"],
    "properties": {
        "cluster": NAME,
        "epoch": INT,
        "brokers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "url"],
                "properties": {"id": INT, "url": {"type": "string", "format": "uri"}},
                "additionalProperties": False,
            },
        },
        "topics": {"type": "object", "additionalProperties": {"type": ["object", "null"]}},
        "owners": {"type": "object"},
        "partitions": {"type": "object"},
        "under_replicated": {
            "type": "array", "description": "gateway, replicated cluster: partitions whose ISR is smaller than their replicas"
        },
        "offline": {"type": "array", "description": "gateway, replicated cluster: partitions without a leader that answers"},
        "defaults": {"type": ["object", "null"]},
        "settings": {"type": ["object", "null"]},
        "delete_topics": {
            "type": "array",
            "items": NAME,
            "description": "topics of the installed topology this one leaves out, to delete with their data; "
            "leaving a topic out without naming it here is 400 INVALID_REQUEST (field delete_topics)",
        },
    },
    "additionalProperties": False,
}

_UNAVAILABLE = {
    "type": "array",
    "items": {"type": "integer"},
    "description": "gateway only: ids of the brokers that did not answer; their partitions are missing",
}
_GROUP = {
    "type": "object",
    "required": ["group", "partitions"],
    "properties": {
        "group": {"type": "string"},
        "broker_id": {"type": "integer"},
        "unavailable_brokers": _UNAVAILABLE,
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
        "schema": schema or {"topic": NAME, "group": NAME, "partition": PARTITION}.get(name, INT),
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


def _gateway_paths() -> dict[str, Any]:
    """What only the gateway serves: keyed JSON produce over a whole topic."""
    record = {**_RECORD_IN, "properties": {**_RECORD_IN["properties"], "partition": {
        **PARTITION, "description": "this partition instead of the key's (murmur2) or the round-robin one"}}}
    placed = {"type": "array", "items": {"oneOf": [
        {"type": "object", "required": ["partition", "offset"], "properties": {"partition": PARTITION, "offset": INT}},
        {"type": "null"}]}}
    ok = {"type": "object", "required": ["topic", "offsets"], "properties": {"topic": NAME, "offsets": placed}}
    op = _op(
        "Append JSON records to a topic: by key (Kafka's murmur2 partitioner), else round-robin",
        {"description": "every record written; offsets[i] is where records[i] landed", "content": _json(ok)},
        "UNKNOWN_TOPIC", "UNSUPPORTED_MEDIA_TYPE", "BATCH_TOO_LARGE", "THROTTLED", "STORAGE_FULL",
        "BROKER_UNAVAILABLE", "NOT_OWNER", "INVALID_TIMESTAMP", "REQUEST_TIMEOUT",
        params=[_param("topic")],
        body=_json({"type": "object", "required": ["records"], "properties": {
            "records": {"type": "array", "minItems": 1, "maxItems": 10_000, "items": record}}}),
    )
    op["responses"]["207"] = {"description": "some partitions failed: their records' offsets are null", "content": _json(
        {**ok, "required": ["topic", "offsets", "errors"], "properties": {
            **ok["properties"], "errors": {"type": "array", "items": _PROBLEM}}})}
    return {"/v1/topics/{topic}/records": {"post": op}}


_PARTITION_MAP = {"type": "object", "additionalProperties": {"type": "array", "items": PARTITION}}
_MEMBER_ANSWER = {
    "type": "object",
    "required": ["member_id", "generation", "assignment", "heartbeat_interval_ms"],
    "properties": {
        "group": {"type": "string"},
        "member_id": {"type": "string"},
        "generation": INT,
        "assignment": _PARTITION_MAP,
        "heartbeat_interval_ms": INT,
        "state": {"type": "string"},
    },
}
_MEMBER_ID = {"type": "string", "minLength": 1, "maxLength": 128}


def _membership_paths() -> dict[str, Any]:
    """Consumer group membership, served by the group's coordinator (NOT_OWNER elsewhere)."""
    group = [_param("group")]
    member = group + [{"name": "member", "in": "path", "required": True, "schema": _MEMBER_ID}]
    fenced = ("NOT_OWNER", "UNKNOWN_MEMBER_ID", "UNSUPPORTED_MEDIA_TYPE")
    return {
        "/v1/groups/{group}/members": {
            "post": _op("Join the group", {"description": "joined", "content": _json(_MEMBER_ANSWER)},
                        "NOT_OWNER", "UNKNOWN_TOPIC", "GROUP_MAX_SIZE_REACHED", "UNSUPPORTED_MEDIA_TYPE", params=group,
                        body=_json({"type": "object", "required": ["topics"], "properties": {
                            "topics": {"type": "array", "minItems": 1, "items": NAME},
                            "assignor": {"enum": ["sticky", "range", "roundrobin", None]},
                            "session_timeout_ms": {"type": ["integer", "null"], "minimum": 500, "maximum": 300_000},
                            "group_instance_id": {**_MEMBER_ID, "type": ["string", "null"]},
                            "member_id": {**_MEMBER_ID, "type": ["string", "null"]}}})),
            "get": _op("The group's state and members", {"description": "members", "content": _json(
                {"type": "object", "required": ["group", "state", "generation", "members"]})}, "NOT_OWNER", params=group),
        },
        "/v1/groups/{group}/members/{member}/heartbeat": {
            "post": _op("Stay in the group; learn the assignment", {"description": "assignment", "content": _json(
                _MEMBER_ANSWER)}, *fenced, params=member,
                body=_json({"type": "object", "properties": {"owned": _PARTITION_MAP}})),
        },
        "/v1/groups/{group}/members/{member}": {
            "delete": _op("Leave the group at once", {"description": "left", "content": _json({"type": "object"})},
                          "NOT_OWNER", "UNKNOWN_MEMBER_ID", params=member),
        },
        "/v1/groups/{group}/fence": {
            "post": _op("May this member's commit be stored? (asked by partition owners)", {
                "description": "yes", "content": _json({"type": "object"})},
                *fenced, "ILLEGAL_GENERATION", params=group,
                body=_json({"type": "object", "properties": {
                    "member_id": {**_MEMBER_ID, "type": ["string", "null"]},
                    "generation": {"type": ["integer", "null"]}, "partitions": _PARTITION_MAP}})),
        },
    }


def build_openapi(title: str = "shoal", *, gateway: bool = False) -> dict[str, Any]:
    """The document; ``gateway`` adds what only the gateway serves and drops /metrics."""
    doc = _document(title)
    if gateway:
        del doc["paths"]["/metrics"]
        doc["paths"].update(_gateway_paths())
    return doc


def _document(title: str) -> dict[str, Any]:
    watermarks = {"log_start_offset": INT, "high_watermark": INT}
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{title} HTTP API", "version": "1"},
        "paths": {
            "/v1/topics/{topic}/partitions/{partition}/records": {
                "post": _op(
                    "Append records (JSON or framed batches)",
                    {"description": "written under the topic's flush policy; the body's records hold offsets "
                     "base_offset .. base_offset + count - 1 (an idempotent batch travels alone: a body with "
                     "several batches, one with a producer id, is 400 INVALID_REQUEST)", "content": _json({
                        "type": "object", "required": ["base_offset", "count"],
                        "properties": {"base_offset": INT, "count": INT, "duplicate": {"type": "boolean"}}})},
                    *_PART_ERRORS, "CORRUPT_BATCH", "BATCH_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE", "THROTTLED",
                    "DUPLICATE_SEQUENCE", "STORAGE_FULL", "INVALID_TIMESTAMP", "REQUEST_TIMEOUT",
                    "LEADER_NOT_AVAILABLE", "NOT_ENOUGH_REPLICAS", "FENCED_LEADER_EPOCH",
                    params=[*_PART, _param("acks", "query", {"type": "string", "enum": ["all", "-1", "1"]}, False),
                            _param("leader_epoch", "query", INT, False)],
                    body={
                        "application/json": {"schema": {"type": "object", "required": ["records"], "properties": {
                            "records": {"type": "array", "minItems": 1, "maxItems": 10_000, "items": _RECORD_IN}}}},
                        BATCH: {"schema": {"type": "string", "format": "binary"}},
                    },
                ),
                "get": _op(
                    "Read records from an offset (long-poll with max_wait_ms)",
                    {"description": "records at or after offset", "content": {
                        **_json({"type": "object", "required": ["records", "high_watermark", "log_start_offset"],
                                 "properties": {"records": {"type": "array", "items": _RECORD_OUT}, **watermarks}}),
                        BATCH: {"schema": {"type": "string", "format": "binary"}}}},
                    *_PART_ERRORS, "OFFSET_OUT_OF_RANGE", "NOT_ACCEPTABLE", "CORRUPT_RECORD", "THROTTLED",
                    params=_PART + [
                        _param("offset", "query", INT, False),
                        _param("max_bytes", "query", {**INT, "minimum": 1}, False),
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
                    *_PART_ERRORS, "OFFSET_OUT_OF_RANGE", "UNSUPPORTED_MEDIA_TYPE", "REQUEST_TIMEOUT",
                    params=[_param("group")] + _PART,
                    body=_json({"type": "object", "required": ["offset"], "properties": {
                        "offset": {"type": "integer", "description": "log_start_offset..high_watermark, else 416"},
                        "metadata": {"type": ["string", "null"], "maxLength": 4096},
                        "member_id": {"type": ["string", "null"], "description": "a subscribed consumer's, for fencing"},
                        "generation": {"type": ["integer", "null"]}}}),
                ),
            },
            "/v1/groups": {"get": _op("Groups with committed offsets here", {"description": "groups", "content": _json(
                {"type": "object", "properties": {"groups": {"type": "array", "items": _GROUP},
                                                  "unavailable_brokers": _UNAVAILABLE}})})},
            "/v1/groups/{group}": {
                "get": _op("Committed offsets and lag of one group", {"description": "group", "content": _json(_GROUP)},
                           params=[_param("group")]),
                "delete": _op("Forget a group's committed offsets", {"description": "deleted", "content": _json(
                    {"type": "object"})}, params=[_param("group")]),
            },
            **_membership_paths(),
            "/v1/cluster": {
                "get": _op("The installed topology and partition owners", {"description": "topology", "content": _json(
                    {"type": "object", "required": ["cluster", "epoch", "brokers", "topics", "owners"]})}),
                "put": _op("Install a newer topology (admin)", {"description": "installed", "content": _json(
                    {"type": "object"})}, "STALE_EPOCH", "TOPOLOGY_CONFLICT", "UNSUPPORTED_MEDIA_TYPE",
                    "THROTTLED", "REQUEST_TIMEOUT", body=_json(_TOPOLOGY_IN)),
            },
            "/v1/health": {"get": _op("Liveness and epoch", {"description": "serving", "content": _json(
                {"type": "object", "required": ["status"], "properties": {
                    "status": {"type": "string"}, "epoch": INT,
                    "pending_epoch": {**INT, "description": "a stored epoch held back until the other brokers have it"},
                }})})},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "text exposition format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
                "description": "OpenAPI 3.1", "content": _json({"type": "object"})}}}},
        },
    }
