"""Key partitioner: bit-compatible with Kafka's Java client; sticky partitioner for keyless records."""

from __future__ import annotations

import random

import pytest

from shoal.client import partitioner
from shoal.client.partitioner import DefaultPartitioner, StickyPartitioner, murmur2_python, partition_for_key

# Kafka's clients/src/test/.../common/utils/UtilsTest.testMurmur2.
KAFKA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}
# The same values other clients pin against Kafka's Utils.murmur2 (e.g. akka's Murmur2Spec).
MORE_MURMUR2 = {b"1": -1993445489, b"12": 126087238, b"123": -267702483, b"1234": -1614185708, b"12345": -1188365604}
# partition over 1000 partitions, as Kafka's Java producer computes it (kafka-python's compatibility test).
JAVA_PARTITIONS_OF_1000 = {b"": 681, b"a": 524, b"ab": 434, b"abc": 107, b"123456789": 566, b"\x00 ": 742}


@pytest.fixture(autouse=True, params=["python", "compiled"])
def key_hash(request, monkeypatch):
    """Every test runs with the pure-Python key hash and with the compiled one (client/_murmur2.c)."""
    if request.param == "python":
        monkeypatch.setattr(partitioner, "key_hash", partitioner.key_hash_python)
    elif partitioner._compiled_key_hash is None:
        pytest.fail("client/_murmur2.c was not built: pip install -e . needs a C compiler")
    else:
        assert partitioner.key_hash is partitioner._compiled_key_hash  # what the producer uses
    return partitioner.key_hash


@pytest.mark.parametrize("key, expected", sorted({**KAFKA_MURMUR2, **MORE_MURMUR2}.items()))
def test_murmur2_matches_kafka(key_hash, key, expected):
    assert murmur2_python(key) == expected
    assert key_hash(key) == expected & 0x7FFFFFFF


def test_both_hashes_agree_on_keys_of_every_length(key_hash):
    rng = random.Random(11)
    for length in range(70):
        for _ in range(5):
            key = rng.randbytes(length)
            assert key_hash(key) == partitioner.key_hash_python(key) == murmur2_python(key) & 0x7FFFFFFF


def test_the_compiled_hash_takes_bytes_only():
    if partitioner._compiled_key_hash is not None:
        with pytest.raises(TypeError, match="key must be bytes"):
            partitioner._compiled_key_hash(bytearray(b"k"))


@pytest.mark.parametrize("key, expected", sorted(JAVA_PARTITIONS_OF_1000.items()))
def test_partition_for_key_matches_the_java_client(key, expected):
    assert partition_for_key(key, 1000) == expected


PINNED_6 = [2, 2, 0, 2, 3]
PINNED_12 = [8, 8, 0, 8, 9]


def test_pinned_key_to_partition_vectors():
    """Routing of keys may never change silently: these are what producers rely on."""
    keys = [b"user-1", b"user-2", b"order-42", b"\xff\xfe\xfd", b"x" * 33]
    assert [partition_for_key(k, 6) for k in keys] == PINNED_6
    assert [partition_for_key(k, 12) for k in keys] == PINNED_12



def test_partition_for_key_accepts_any_buffer():
    assert partition_for_key(bytearray(b"foobar"), 7) == partition_for_key(b"foobar", 7)
    assert partition_for_key(memoryview(b"foobar"), 7) == partition_for_key(b"foobar", 7)


def test_zero_partitions_is_an_error():
    with pytest.raises(ValueError):
        partition_for_key(b"k", 0)


def test_sticky_stays_until_a_new_batch():
    sticky = StickyPartitioner(random.Random(7))
    first = sticky.partition("t", 8)
    assert all(sticky.partition("t", 8) == first for _ in range(50))
    second = sticky.on_new_batch("t", 8, first)
    assert second != first
    assert sticky.partition("t", 8) == second


def test_sticky_ignores_a_stale_new_batch():
    """Only the batch of the current sticky partition moves it (Kafka's StickyPartitionCache)."""
    sticky = StickyPartitioner(random.Random(1))
    current = sticky.partition("t", 8)
    other = (current + 1) % 8
    assert sticky.on_new_batch("t", 8, other) == current


def test_sticky_spreads_over_every_partition():
    sticky = StickyPartitioner(random.Random(3))
    seen = set()
    for _ in range(200):
        seen.add(sticky.on_new_batch("t", 5, sticky.partition("t", 5)))
    assert seen == set(range(5))


def test_sticky_is_per_topic_and_follows_partition_count_shrinking():
    sticky = StickyPartitioner(random.Random(5))
    assert sticky.partition("one", 1) == 0
    assert sticky.on_new_batch("one", 1, 0) == 0
    for _ in range(20):
        p = sticky.partition("t", 100)
        assert 0 <= sticky.partition("t", 3) < 3
        sticky.on_new_batch("t", 100, p)


def test_default_partitioner_uses_the_key_when_there_is_one():
    part = DefaultPartitioner(random.Random(0))
    assert part.partition("t", b"foobar", 12) == partition_for_key(b"foobar", 12)
    keyless = part.partition("t", None, 12)
    assert part.partition("t", None, 12) == keyless
    assert part.on_new_batch("t", 12, keyless) != keyless
