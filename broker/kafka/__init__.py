"""The Kafka wire-protocol listener of a broker (``brokers[].kafka`` in cluster.yaml).

``listener.KafkaListener`` serves it; ``records`` checks Kafka batches and converts
between them and shoal frames. This module stays light: a broker that never meets a
Kafka batch never loads the Kafka codec.
"""

from __future__ import annotations

import sys

from shoal.client.errors import CorruptBatch, CorruptRecordError
from shoal.client.records import KAFKA_MAGIC, MAGIC, FrameHeader, iter_frames

__all__ = ["as_shoal_frames", "check_copied_frames", "import_listener"]


def as_shoal_frames(stored: bytes) -> bytes:
    """Stored frames as a shoal reader needs them: ``stored`` itself when it holds no
    Kafka batch, else a copy with each Kafka batch converted (``records.to_shoal_frames``)."""
    if all(h.magic != KAFKA_MAGIC for h, _ in iter_frames(stored, check_crc=False)):
        return stored
    from shoal.broker.kafka.records import to_shoal_frames

    return to_shoal_frames(stored)


def check_copied_frames(body: bytes) -> list[FrameHeader]:
    """The headers of frames a follower copied from its leader: whole frames of either
    protocol, each with a CRC that holds. Their records are not decoded again: the
    leader checked them when it took them in, and the CRC shows they arrived as the
    leader stored them, so a second decode on every follower would cost as much CPU as
    the leader's own check and find nothing more. Raises CorruptBatch otherwise."""
    headers: list[FrameHeader] = []
    copied = 0
    try:
        for h, frame in iter_frames(body):
            if h.magic not in (MAGIC, KAFKA_MAGIC) or h.record_count < 1:
                raise CorruptBatch(f"copied frame at offset {h.base_offset} has magic {h.magic}, {h.record_count} records")
            headers.append(h)
            copied += len(frame)
    except CorruptRecordError as exc:
        raise CorruptBatch(str(exc)) from exc
    if not headers or copied != len(body):
        raise CorruptBatch(f"the copied frames end in a partial frame ({len(body) - copied} bytes)")
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
