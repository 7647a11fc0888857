"""shoal's client library: a partition-aware producer and consumer, async and blocking.

    from shoal.client import AsyncProducer, AsyncConsumer, TopicPartition
"""

from .accumulator import RecordsFuture
from .consumer import AsyncConsumer
from .errors import ShoalError
from .producer import AsyncProducer
from .records import RecordBatch
from .structs import OffsetAndMetadata, Record, RecordMetadata, TopicPartition
from .sync import Consumer, Producer

__all__ = [
    "AsyncConsumer",
    "AsyncProducer",
    "Consumer",
    "OffsetAndMetadata",
    "Producer",
    "Record",
    "RecordBatch",
    "RecordMetadata",
    "RecordsFuture",
    "ShoalError",
    "TopicPartition",
]
