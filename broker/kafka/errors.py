"""Kafka error codes for shoal's wire errors (Kafka's ``Errors.java`` numbers)."""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from shoal.client.errors import (
    BatchTooLarge,
    BrokerUnavailable,
    CorruptBatch,
    DuplicateSequence,
    FencedLeaderEpoch,
    Forbidden,
    IllegalGeneration,
    InvalidRequest,
    LeaderNotAvailable,
    NotEnoughReplicas,
    NotOwner,
    OffsetOutOfRange,
    OutOfOrderSequence,
    ShoalError,
    StorageFull,
    Throttled,
    UnknownMemberId,
    UnknownPartition,
    UnknownTopic,
)

_CODES: dict[type, ErrorCode] = {
    NotOwner: ErrorCode.not_leader_or_follower,
    LeaderNotAvailable: ErrorCode.leader_not_available,
    FencedLeaderEpoch: ErrorCode.fenced_leader_epoch,
    NotEnoughReplicas: ErrorCode.not_enough_replicas,
    UnknownTopic: ErrorCode.unknown_topic_or_partition,
    UnknownPartition: ErrorCode.unknown_topic_or_partition,
    OffsetOutOfRange: ErrorCode.offset_out_of_range,
    CorruptBatch: ErrorCode.corrupt_message,
    BatchTooLarge: ErrorCode.message_too_large,
    DuplicateSequence: ErrorCode.duplicate_sequence_number,
    OutOfOrderSequence: ErrorCode.out_of_order_sequence_number,
    Throttled: ErrorCode.request_timed_out,
    StorageFull: ErrorCode.kafka_storage_error,
    BrokerUnavailable: ErrorCode.coordinator_not_available,
    InvalidRequest: ErrorCode.invalid_request,
    Forbidden: ErrorCode.topic_authorization_failed,
    IllegalGeneration: ErrorCode.illegal_generation,
    UnknownMemberId: ErrorCode.unknown_member_id,
}


class KafkaError(Exception):
    """A request refused with a Kafka error code that no shoal wire error stands for."""

    def __init__(self, code: ErrorCode):
        super().__init__(code.name)
        self.code = code


def kafka_code(exc: ShoalError | KafkaError) -> int:
    """The Kafka error code a client should see for ``exc``."""
    if isinstance(exc, KafkaError):
        return int(exc.code)
    for cls in type(exc).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return int(code)
    return int(ErrorCode.unknown_server_error)
