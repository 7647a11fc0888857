"""The errors that cross the wire: one class per stable ``code``.

This module is the single table of wire errors, imported by the broker (which raises
them and renders ``to_problem()`` as RFC 9457 problem+json) and by the client (which
rebuilds them with ``ShoalError.from_problem()``). A code never changes once released.

Each wire error class sets:

* ``code``: the stable UPPER_SNAKE name carried in the problem body;
* ``http_status``: the HTTP status the broker answers with;
* ``retriable``: the same request may succeed if sent again later;
* ``refresh_topology``: the client should re-read ``GET /v1/cluster`` before retrying;
* ``fields``: the names of the code's own members beside the standard ones.

Client-only errors (time-outs, an unreachable broker, a closed producer) have no code
and are not in the table.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

__all__ = [
    "ShoalError",
    "ShoalApiError",
    "UnknownTopic",
    "UnknownPartition",
    "NotOwner",
    "OffsetOutOfRange",
    "InvalidRequest",
    "CorruptBatch",
    "CorruptStoredRecord",
    "InvalidTimestamp",
    "BatchTooLarge",
    "UnsupportedMediaType",
    "NotAcceptable",
    "StaleEpoch",
    "TopologyConflict",
    "DuplicateSequence",
    "OutOfOrderSequence",
    "IllegalGeneration",
    "UnknownMemberId",
    "GroupMaxSizeReached",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "MethodNotAllowed",
    "Throttled",
    "RequestTimeout",
    "StorageFull",
    "BrokerUnavailable",
    "LeaderNotAvailable",
    "FencedLeaderEpoch",
    "NotEnoughReplicas",
    "InternalError",
    "ShoalTimeoutError",
    "BrokerUnreachable",
    "ProducerClosedError",
    "ConsumerClosedError",
    "BufferFullError",
    "NoOffsetForPartitionError",
    "CorruptRecordError",
    "error_for_code",
]

# A relative URI reference (RFC 9457 §3.1.1): the project owns no domain to put in an
# absolute one. A problem type received from elsewhere is kept as it came.
PROBLEM_TYPE_PREFIX = "/problems/"
_STANDARD = ("type", "title", "status", "detail", "code", "instance")


class ShoalError(Exception):
    """Root of every error the shoal client and broker raise.

    ``retriable`` and ``refresh_topology`` carry the retry policy for client-only
    errors too, so callers read it from any ``ShoalError`` without matching classes.
    """

    retriable: ClassVar[bool] = False
    refresh_topology: ClassVar[bool] = False

    @staticmethod
    def from_problem(body: Any, *, status: int | None = None) -> "ShoalApiError":
        """Rebuild the typed error from a problem+json body (a dict, str or bytes).

        Dispatches on ``code``, never on the HTTP status. An unknown code or a body
        that is not a problem object gives ``ShoalApiError`` itself, keeping the
        status, the code and an excerpt of the body.
        """
        if isinstance(body, (bytes, bytearray)):
            body = body.decode("utf-8", "replace")
        if isinstance(body, str):
            text = body
            try:
                body = json.loads(body)
            except ValueError:
                return ShoalApiError(
                    f"non-JSON error body: {text[:200]!r}", status=status or 0
                )
        if not isinstance(body, dict):
            return ShoalApiError(f"unexpected error body: {str(body)[:200]!r}", status=status or 0)
        code = body.get("code")
        cls = error_for_code(code) if isinstance(code, str) else ShoalApiError
        extra = {k: v for k, v in body.items() if k not in _STANDARD}
        err = cls(
            str(body.get("detail") or body.get("title") or code or "error"),
            status=body.get("status", status),
            **extra,
        )
        for name in ("type", "instance"):
            if isinstance(body.get(name), str):
                setattr(err, f"problem_{name}", body[name])
        if cls is ShoalApiError:
            err.code = code if isinstance(code, str) else None
            err.title = body.get("title", err.title)
        return err


class ShoalApiError(ShoalError):
    """An error with a wire code: raised by the broker, rebuilt by the client.

    ``problem_type`` and ``problem_instance`` are the problem's ``type`` and
    ``instance`` as received (None for an error raised here); ``to_problem()`` gives
    them back unchanged, so an error passed on (by the gateway) keeps them.
    """

    code: ClassVar[str | None] = None
    title: ClassVar[str] = "Shoal error"
    http_status: ClassVar[int] = 500
    retriable: ClassVar[bool] = False
    refresh_topology: ClassVar[bool] = False
    fields: ClassVar[tuple[str, ...]] = ()
    problem_type: str | None = None
    problem_instance: str | None = None

    def __init__(self, detail: str = "", *, status: int | None = None, **fields: Any):
        super().__init__(detail)
        self.detail = detail or self.title
        if status is not None and type(self).code is None:
            self.http_status = int(status)  # keep what an unknown code came with
        self.extra = {k: v for k, v in fields.items() if k not in self.fields}
        for name in self.fields:
            setattr(self, name, fields.get(name))

    def __str__(self) -> str:
        return f"[{self.code or self.http_status}] {self.detail}"

    def __reduce__(self):
        return (_rebuild, (self.to_problem(),))

    def to_problem(self) -> dict[str, Any]:
        """The RFC 9457 problem object for this error (the inverse of ``from_problem``)."""
        body: dict[str, Any] = {
            "type": self.problem_type or PROBLEM_TYPE_PREFIX + (self.code or "UNKNOWN"),
            "title": self.title,
            "status": self.http_status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.problem_instance is not None:
            body["instance"] = self.problem_instance
        body.update(self.extra)
        for name in self.fields:
            body[name] = getattr(self, name)
        return body

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers the broker sends with this error."""
        return {}


def _rebuild(problem: dict[str, Any]) -> ShoalApiError:
    return ShoalError.from_problem(problem)


class UnknownTopic(ShoalApiError):
    code = "UNKNOWN_TOPIC"
    title = "Unknown topic"
    http_status = 404
    fields = ("topic",)


class UnknownPartition(ShoalApiError):
    code = "UNKNOWN_PARTITION"
    title = "Unknown partition"
    http_status = 404
    fields = ("topic", "partition", "partitions")


class NotOwner(ShoalApiError):
    """The broker asked does not own the partition; ``owner_url`` does."""

    code = "NOT_OWNER"
    title = "Not owner"
    http_status = 421
    retriable = True
    refresh_topology = True
    fields = ("owner_id", "owner_url", "epoch")


class OffsetOutOfRange(ShoalApiError):
    code = "OFFSET_OUT_OF_RANGE"
    title = "Offset out of range"
    http_status = 416
    fields = ("offset", "log_start_offset", "high_watermark")


class InvalidRequest(ShoalApiError):
    code = "INVALID_REQUEST"
    title = "Invalid request"
    http_status = 400
    fields = ("field",)


class CorruptBatch(ShoalApiError):
    code = "CORRUPT_BATCH"
    title = "Corrupt batch"
    http_status = 400


class CorruptStoredRecord(ShoalApiError):
    """A stored batch at ``offset`` does not decode; a reader may go on at ``next_offset``."""

    code = "CORRUPT_RECORD"
    title = "Corrupt stored record"
    http_status = 422
    fields = ("topic", "partition", "offset", "next_offset")


class InvalidTimestamp(ShoalApiError):
    """A record's timestamp is more than ``max_future_ms`` ahead of the broker's clock."""

    code = "INVALID_TIMESTAMP"
    title = "Invalid timestamp"
    http_status = 400
    fields = ("timestamp", "max_future_ms")


class BatchTooLarge(ShoalApiError):
    code = "BATCH_TOO_LARGE"
    title = "Batch too large"
    http_status = 413
    fields = ("max_bytes",)


class UnsupportedMediaType(ShoalApiError):
    code = "UNSUPPORTED_MEDIA_TYPE"
    title = "Unsupported media type"
    http_status = 415
    fields = ("supported",)


class NotAcceptable(ShoalApiError):
    code = "NOT_ACCEPTABLE"
    title = "Not acceptable"
    http_status = 406
    fields = ("supported",)


class StaleEpoch(ShoalApiError):
    """A topology older than (or as old as) the one installed was offered."""

    code = "STALE_EPOCH"
    title = "Stale epoch"
    http_status = 409
    refresh_topology = True
    fields = ("epoch",)


class TopologyConflict(ShoalApiError):
    """A topology change would move partitions that hold data."""

    code = "TOPOLOGY_CONFLICT"
    title = "Topology conflict"
    http_status = 409
    fields = ("partitions",)


class DuplicateSequence(ShoalApiError):
    code = "DUPLICATE_SEQUENCE"
    title = "Duplicate sequence"
    http_status = 409
    fields = ("producer_id", "expected")


class OutOfOrderSequence(ShoalApiError):
    code = "OUT_OF_ORDER_SEQUENCE"
    title = "Out of order sequence"
    http_status = 409
    fields = ("producer_id", "expected")


class IllegalGeneration(ShoalApiError):
    """A group member's commit is fenced: its generation is over, or it does not hold
    the partition (any more). Re-heartbeat and commit only what is still assigned."""

    code = "ILLEGAL_GENERATION"
    title = "Illegal generation"
    http_status = 409
    fields = ("member_id", "generation")


class UnknownMemberId(ShoalApiError):
    """The coordinator does not know this member (it timed out or left): join again."""

    code = "UNKNOWN_MEMBER_ID"
    title = "Unknown member id"
    http_status = 409
    fields = ("member_id",)


class GroupMaxSizeReached(ShoalApiError):
    """The group already has ``settings.group_max_size`` members: this one may not join."""

    code = "GROUP_MAX_SIZE_REACHED"
    title = "Group max size reached"
    http_status = 409
    fields = ("max_size",)


class Unauthorized(ShoalApiError):
    code = "UNAUTHORIZED"
    title = "Unauthorized"
    http_status = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="shoal"'}


class Forbidden(ShoalApiError):
    code = "FORBIDDEN"
    title = "Forbidden"
    http_status = 403
    fields = ("principal", "permission")


class NotFound(ShoalApiError):
    code = "NOT_FOUND"
    title = "Not found"
    http_status = 404
    fields = ("path",)


class MethodNotAllowed(ShoalApiError):
    code = "METHOD_NOT_ALLOWED"
    title = "Method not allowed"
    http_status = 405
    fields = ("allowed",)

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed or ())}  # required on a 405 (RFC 9110)


class Throttled(ShoalApiError):
    """The broker's queues are full: retry after ``retry_after`` seconds."""

    code = "THROTTLED"
    title = "Throttled"
    http_status = 429
    retriable = True
    fields = ("retry_after",)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after or 1)))}


class RequestTimeout(ShoalApiError):
    """The request body did not arrive within the broker's ``body_timeout_ms``."""

    code = "REQUEST_TIMEOUT"
    title = "Request timeout"
    http_status = 408
    retriable = True
    fields = ("timeout_ms",)


class StorageFull(ShoalApiError):
    """The broker could not write: the disk is full. Nothing was written."""

    code = "STORAGE_FULL"
    title = "Storage full"
    http_status = 507
    retriable = True
    fields = ("broker_id",)


class BrokerUnavailable(ShoalApiError):
    """The gateway could not reach the partition's owner."""

    code = "BROKER_UNAVAILABLE"
    title = "Broker unavailable"
    http_status = 503
    retriable = True
    refresh_topology = True
    fields = ("broker_id",)


class LeaderNotAvailable(ShoalApiError):
    """The partition has no leader that may answer right now (an election is under way,
    or the broker asked lost its lease): retry after ``retry_after`` seconds."""

    code = "LEADER_NOT_AVAILABLE"
    title = "Leader not available"
    http_status = 503
    retriable = True
    refresh_topology = True
    fields = ("topic", "partition", "retry_after")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after or 1)))}


class NotEnoughReplicas(ShoalApiError):
    """``acks=all`` needs more in-sync replicas than the partition has (``isr`` of
    ``min_insync``), or they did not all copy the batch in time; retry later."""

    code = "NOT_ENOUGH_REPLICAS"
    title = "Not enough replicas"
    http_status = 503
    retriable = True
    fields = ("topic", "partition", "isr", "min_insync")


class FencedLeaderEpoch(ShoalApiError):
    """The request carried a leader epoch other than the partition's current one."""

    code = "FENCED_LEADER_EPOCH"
    title = "Fenced leader epoch"
    http_status = 409
    retriable = True
    refresh_topology = True
    fields = ("topic", "partition", "leader_epoch")


class InternalError(ShoalApiError):
    code = "INTERNAL"
    title = "Internal error"
    http_status = 500
    retriable = True


# Client-only errors: no wire code.


class ShoalTimeoutError(ShoalError, TimeoutError):
    """An operation did not finish within its time-out.

    A request that got no answer asks for a fresh topology: the broker may be frozen or
    cut off while another has taken its partitions over."""

    retriable = True
    refresh_topology = True


class BrokerUnreachable(ShoalError, ConnectionError):
    """No connection could be made to a broker (refused, reset, timed out)."""

    retriable = True
    refresh_topology = True

    def __init__(self, url: str, reason: str = ""):
        super().__init__(f"broker {url} unreachable: {reason}" if reason else f"broker {url} unreachable")
        self.url = url
        self.reason = reason


class ProducerClosedError(ShoalError):
    """``send()`` was called on a producer that is closed or closing."""


class ConsumerClosedError(ShoalError):
    """A read or commit was called on a consumer that is closed."""


class BufferFullError(ShoalError):
    """The producer's buffer stayed full for longer than ``max_block_ms``."""


class NoOffsetForPartitionError(ShoalError):
    """``auto_offset_reset="none"`` and the group has no usable committed offset."""

    def __init__(self, message: str, *, topic: str, partition: int):
        super().__init__(message)
        self.topic = topic
        self.partition = partition


class CorruptRecordError(ShoalError):
    """A fetched batch failed its CRC or could not be decoded.

    Attributes:
        topic, partition: where it is stored (None where unknown).
        offset: the first offset that could not be read.
        next_offset: the offset after the batch, per its header: ``seek()`` there to
            read on past it (its records are lost to this reader).
    """

    def __init__(
        self,
        message: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
        next_offset: int | None = None,
    ):
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.next_offset = next_offset



def _registry() -> dict[str, type[ShoalApiError]]:
    table: dict[str, type[ShoalApiError]] = {}
    todo = list(ShoalApiError.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.code:
            if cls.code in table:
                raise RuntimeError(f"duplicate error code {cls.code}")
            table[cls.code] = cls
    return table


_BY_CODE = _registry()


def error_for_code(code: str | None) -> type[ShoalApiError]:
    """The class for a wire code; ``ShoalApiError`` for an unknown one."""
    return _BY_CODE.get(code or "", ShoalApiError)
