"""Immutable value types shared by the producer, the consumer and the broker."""

from __future__ import annotations

from typing import NamedTuple


class TopicPartition(NamedTuple):
    """One partition of a topic."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}"


class RecordMetadata(NamedTuple):
    """Where an acknowledged record was stored."""

    topic: str
    partition: int
    offset: int


class Record(NamedTuple):
    """A consumed record.

    Attributes:
        topic, partition, offset: where it is stored.
        key: the key bytes, or None for a keyless record.
        value: the value bytes (None for a tombstone).
        timestamp: milliseconds since the epoch, as the producer set it.
        headers: header name -> bytes.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: dict

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class OffsetAndMetadata(NamedTuple):
    """A committed offset: the next offset the group should read."""

    offset: int
    metadata: str = ""
