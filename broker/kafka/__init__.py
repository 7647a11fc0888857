"""The Kafka wire-protocol listener of a broker (``brokers[].kafka`` in cluster.yaml).

``listener.KafkaListener`` serves it; ``records`` checks Kafka batches and converts
between them and shoal frames. This module stays light: a broker that never meets a
Kafka batch never loads the Kafka codec.
"""

from __future__ import annotations

from shoal.client.records import KAFKA_MAGIC, iter_frames

__all__ = ["as_shoal_frames"]


def as_shoal_frames(stored: bytes) -> bytes:
    """Stored frames as a shoal reader needs them: ``stored`` itself when it holds no
    Kafka batch, else a copy with each Kafka batch converted (``records.to_shoal_frames``)."""
    if all(h.magic != KAFKA_MAGIC for h, _ in iter_frames(stored, check_crc=False)):
        return stored
    from shoal.broker.kafka.records import to_shoal_frames

    return to_shoal_frames(stored)
