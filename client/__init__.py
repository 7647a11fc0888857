"""shoal's client library: a partition-aware producer and consumer, async and blocking.

    from shoal.client import AsyncProducer, AsyncConsumer, TopicPartition
"""

from .consumer import AsyncConsumer
from .errors import ShoalError
from .producer import AsyncProducer
from .structs import OffsetAndMetadata, Record, RecordMetadata, TopicPartition
from .sync import Consumer, Producer

__all__ = [
    "AsyncConsumer",
    "AsyncProducer",
    "Consumer",
    "OffsetAndMetadata",
    "Producer",
    "Record",
    "RecordMetadata",
    "ShoalError",
    "TopicPartition",
]
