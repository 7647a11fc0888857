"""The Kafka wire-protocol listener of a broker (``brokers[].kafka`` in cluster.yaml).

``listener.KafkaListener`` serves it; ``records`` checks Kafka batches and converts
between them and shoal frames. This module stays light: a broker that never meets a
Kafka batch never loads the Kafka codec.
"""

from __future__ import annotations

import sys

from shoal.client.errors import CorruptBatch
from shoal.client.records import KAFKA_MAGIC, FrameHeader, iter_frames, validate_frames

__all__ = ["as_shoal_frames", "check_copied_frames", "import_listener"]


def as_shoal_frames(stored: bytes) -> bytes:
    """Stored frames as a shoal reader needs them: ``stored`` itself when it holds no
    Kafka batch, else a copy with each Kafka batch converted (``records.to_shoal_frames``)."""
    if all(h.magic != KAFKA_MAGIC for h, _ in iter_frames(stored, check_crc=False)):
        return stored
    from shoal.broker.kafka.records import to_shoal_frames

    return to_shoal_frames(stored)


def check_copied_frames(body: bytes) -> list[FrameHeader]:
    """The headers of frames a follower copied from its leader, each checked by the
    rules of its protocol (``validate_frames`` for shoal frames, ``records.check_batches``
    for Kafka batches). Raises CorruptBatch for anything else than whole, valid frames."""
    frames = list(iter_frames(body, check_crc=False))
    if all(h.magic != KAFKA_MAGIC for h, _ in frames):
        return validate_frames(body)
    from shoal.broker.kafka.records import check_batches

    if sum(len(frame) for _, frame in frames) != len(body):
        raise CorruptBatch("the copied frames end in a partial frame")
    headers: list[FrameHeader] = []
    for h, frame in frames:
        headers += check_batches(frame) if h.magic == KAFKA_MAGIC else validate_frames(frame)
    return headers


def import_listener() -> type:
    """``listener.KafkaListener``, imported without Hypothesis.

    kio registers Hypothesis strategies for its types whenever Hypothesis is importable
    (wherever the dev extras are installed); a broker never uses them, and importing
    Hypothesis adds a second of CPU to the listener's start. A process that has
    imported Hypothesis already keeps it.
    """
    blocked = "hypothesis" not in sys.modules
    if blocked:
        sys.modules["hypothesis"] = None  # `import hypothesis` raises ImportError
    try:
        from shoal.broker.kafka.listener import KafkaListener
    finally:
        if blocked:
            del sys.modules["hypothesis"]
    return KafkaListener
