"""Which partition a record goes to: Kafka's default partitioner.

A keyed record goes to ``(murmur2(key) & 0x7fffffff) % partitions``, bit for bit what
Kafka's Java client computes (``Utils.murmur2`` and ``Utils.toPositive``), so a key
lands on the same partition number as it would in Kafka. Keyless records use a
sticky partitioner: they all go to one random partition until the batch for it is
sent, then to another, which makes fewer, larger batches than round-robin.

MurmurHash2 in pure Python costs about 2 µs for a 16-byte key, more than ``send()``
costs for the whole of a keyless record, and no arrangement of Python code gets it
near the 0.3 µs that would keep keyed records within 1.3x of keyless ones. So the
hash is also compiled (``_murmur2.c``, built by ``pip install`` where a C compiler
is at hand; a call costs about what ``len()`` does), and ``murmur2_python`` is the
fallback, with identical results: the tests run every vector through both.
"""

from __future__ import annotations

import random
import struct

try:
    from ._murmur2 import key_hash as _compiled_key_hash
except ImportError:  # built without a C compiler: the pure-Python hash below
    _compiled_key_hash = None

__all__ = ["murmur2", "partition_for_key", "StickyPartitioner", "DefaultPartitioner"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS = struct.Struct("<I")


def murmur2_python(data: bytes) -> int:
    """Kafka's ``Utils.murmur2``: the 32-bit MurmurHash2 of ``data`` as a signed int.

    Java ints wrap at 32 bits and ``>>>`` shifts in zeros, so everything here is kept
    as an unsigned 32-bit value and made signed only at the end.
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK
    tail = length & ~3
    for (k,) in _WORDS.iter_unpack(memoryview(data)[:tail]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest:
        if rest == 3:
            h ^= data[tail + 2] << 16
        if rest >= 2:
            h ^= data[tail + 1] << 8
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def key_hash_python(key: bytes) -> int:
    """Kafka's ``toPositive(murmur2(key))``, which a key's partition is taken from (``% partitions``)."""
    return murmur2_python(key) & 0x7FFFFFFF


murmur2 = murmur2_python
# key_hash(key: bytes) -> int, the hot path of keyed send(): compiled where it was built.
key_hash = key_hash_python if _compiled_key_hash is None else _compiled_key_hash


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition of a keyed record, as Kafka's default partitioner picks it.

    Raises:
        ValueError: ``partitions`` < 1.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return key_hash(key if key.__class__ is bytes else bytes(key)) % partitions


class StickyPartitioner:
    """Keyless records: one random partition per topic until its batch is sent.

    Call ``on_new_batch`` when the batch of the sticky partition is sent (or full),
    and the next records go to a different random partition, as Kafka's
    ``StickyPartitionCache`` does. Not safe across threads; fine across tasks.

    Args:
        rng: the random source (a seeded ``random.Random`` makes tests repeatable).
    """

    def __init__(self, rng: random.Random | None = None):
        self._rng = rng or random.Random()
        self._current: dict[str, int] = {}

    def partition(self, topic: str, partitions: int) -> int:
        """The sticky partition of ``topic`` with ``partitions`` partitions."""
        current = self._current.get(topic)
        if current is None or current >= partitions:
            current = self._pick(topic, partitions, None)
        return current

    def on_new_batch(self, topic: str, partitions: int, previous: int) -> int:
        """Move ``topic`` off ``previous`` (if it is still the sticky one); return the new one."""
        current = self._current.get(topic)
        if current is None or current == previous:
            current = self._pick(topic, partitions, previous)
        return current

    def _pick(self, topic: str, partitions: int, avoid: int | None) -> int:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        choice = self._rng.randrange(partitions)
        if choice == avoid and partitions > 1:
            # Draw from the other partitions-1 so each is equally likely.
            choice = (avoid + 1 + self._rng.randrange(partitions - 1)) % partitions
        self._current[topic] = choice
        return choice


class DefaultPartitioner:
    """Kafka's default: murmur2 of the key when there is one, sticky otherwise.

    Args:
        rng: the random source for keyless records.
    """

    def __init__(self, rng: random.Random | None = None):
        self.sticky = StickyPartitioner(rng)

    def partition(self, topic: str, key: bytes | None, partitions: int) -> int:
        """The partition for a record of ``topic`` with ``key`` (None for keyless)."""
        if key is None:
            return self.sticky.partition(topic, partitions)
        return partition_for_key(key, partitions)

    def on_new_batch(self, topic: str, partitions: int, previous: int) -> int:
        """A batch for ``previous`` was sent: keyless records move to another partition."""
        return self.sticky.on_new_batch(topic, partitions, previous)
