"""OffsetStore: durable, crash-atomic committed offsets."""

from __future__ import annotations

import asyncio
import logging
import os

import msgpack
import pytest

from shoal.broker.storage import OffsetStore
from shoal.broker.storage.durable import frame
from shoal.broker.storage.offsets import LOG_FILE, SNAPSHOT_FILE
from shoal.client.structs import OffsetAndMetadata, TopicPartition


@pytest.fixture
async def open_store(tmp_path):
    stores = []

    async def make(**kwargs) -> OffsetStore:
        store = OffsetStore(tmp_path / "__offsets", **kwargs)
        await store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.stop()


async def test_commit_then_get(open_store):
    """A commit is readable as soon as it returns."""
    store = await open_store()
    assert store.get("g", "orders", 0) is None
    await store.commit("g", [("orders", 0, 42, "meta"), ("orders", 1, 7, "")])
    assert store.get("g", "orders", 0) == OffsetAndMetadata(42, "meta")
    assert store.group_offsets("g") == {
        TopicPartition("orders", 0): OffsetAndMetadata(42, "meta"),
        TopicPartition("orders", 1): OffsetAndMetadata(7, ""),
    }
    assert store.groups() == ["g"]


async def test_commits_survive_a_reopen(open_store):
    """Committed offsets are read back after stop and start, the latest value winning."""
    store = await open_store()
    await store.commit("g", [("t", 0, 1, "")])
    await store.commit("g", [("t", 0, 2, "second")])
    await store.commit("h", [("t", 3, 9, "")])
    await store.stop()
    again = await open_store()
    assert again.get("g", "t", 0) == OffsetAndMetadata(2, "second")
    assert again.get("h", "t", 3) == OffsetAndMetadata(9, "")
    assert again.groups() == ["g", "h"]


async def test_concurrent_commits_share_one_write(open_store, tmp_path):
    """Commits arriving together are all durable, one record each."""
    store = await open_store()
    await asyncio.gather(*(store.commit("g", [("t", p, p * 10, "")]) for p in range(20)))
    assert {tp.partition: om.offset for tp, om in store.group_offsets("g").items()} == {p: p * 10 for p in range(20)}
    await store.stop()
    again = await open_store()
    assert len(again.group_offsets("g")) == 20


async def test_delete_partitions_and_whole_groups(open_store):
    """delete() forgets given partitions, or the whole group; it survives a reopen."""
    store = await open_store()
    await store.commit("g", [("t", 0, 1, ""), ("t", 1, 2, "")])
    await store.commit("h", [("t", 0, 5, "")])
    await store.delete("g", [TopicPartition("t", 0)])
    assert store.get("g", "t", 0) is None and store.get("g", "t", 1) is not None
    await store.delete("h")
    assert store.groups() == ["g"]
    await store.stop()
    again = await open_store()
    assert again.groups() == ["g"]
    assert again.group_offsets("g") == {TopicPartition("t", 1): OffsetAndMetadata(2, "")}


async def test_a_torn_tail_record_is_cut_and_the_old_value_kept(open_store, tmp_path, caplog):
    """A record half-written by a crash (kill -9 mid-write) is dropped: the old value stays."""
    store = await open_store()
    await store.commit("g", [("t", 0, 1, "old")])
    await store.stop()
    path = tmp_path / "__offsets" / LOG_FILE
    good = os.path.getsize(path)
    whole = frame(msgpack.packb(["c", "g", [["t", 0, 2, "new"]]]))
    with open(path, "ab") as f:
        f.write(whole[:-3])
    with caplog.at_level(logging.WARNING):
        again = await open_store()
    assert again.get("g", "t", 0) == OffsetAndMetadata(1, "old")
    assert os.path.getsize(path) == good
    assert LOG_FILE in caplog.text
    await again.commit("g", [("t", 0, 3, "")])
    await again.stop()
    third = await open_store()
    assert third.get("g", "t", 0) == OffsetAndMetadata(3, "")


async def test_a_corrupt_record_is_cut(open_store, tmp_path):
    """A record failing its CRC ends the replay; everything before it stays."""
    store = await open_store()
    await store.commit("g", [("t", 0, 1, "")])
    await store.commit("g", [("t", 0, 2, "")])
    await store.stop()
    path = tmp_path / "__offsets" / LOG_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    again = await open_store()
    assert again.get("g", "t", 0) == OffsetAndMetadata(1, "")


async def test_compaction_writes_a_snapshot_and_empties_the_log(open_store, tmp_path):
    """Past compact_bytes the state goes to a snapshot and the log restarts empty."""
    store = await open_store(compact_bytes=2_000)
    for i in range(200):
        await store.commit("g", [("t", i % 7, i, "m" * 10)])
    assert store.compactions > 0
    d = tmp_path / "__offsets"
    assert (d / SNAPSHOT_FILE).exists()
    assert os.path.getsize(d / LOG_FILE) <= 2_000
    expected = store.group_offsets("g")
    await store.stop()
    again = await open_store()
    assert again.group_offsets("g") == expected
    assert again.get("g", "t", 199 % 7) == OffsetAndMetadata(199, "m" * 10)


async def test_a_crash_between_snapshot_and_log_truncation_is_harmless(open_store, tmp_path):
    """Replaying an old log over a newer snapshot gives the same state."""
    store = await open_store()
    await store.commit("g", [("t", 0, 1, "")])
    await store.commit("g", [("t", 0, 2, "")])
    await store.delete("g", [("t", 0)])
    await store.commit("g", [("t", 1, 5, "")])
    await store.stop()
    d = tmp_path / "__offsets"
    log_bytes = (d / LOG_FILE).read_bytes()
    store = await open_store(compact_bytes=0)
    await store.commit("g", [("t", 2, 6, "")])  # compacts
    expected = store.group_offsets("g")
    await store.stop()
    with open(d / LOG_FILE, "ab") as f:  # as if the log had not been emptied yet
        f.write(log_bytes)
    again = await open_store()
    assert again.group_offsets("g") == expected
