"""LogManager: partition directories, lazy creation, reopening, and thousands of partitions."""

from __future__ import annotations

import asyncio
import logging
import os
import threading

import pytest

from shoal.broker.storage import LogConfig, LogManager
from shoal.broker.storage.checkpoint import CLEAN_SHUTDOWN, read_recovery_points
from shoal.client.errors import InvalidRequest
from shoal.client.records import encode_batch
from shoal.client.structs import TopicPartition


def batch(value: bytes = b"v") -> bytes:
    return encode_batch([(None, value, None, 1_000)])


@pytest.fixture
async def open_manager(tmp_path):
    managers = []

    async def make(config_for=lambda topic: LogConfig(), **kwargs) -> LogManager:
        manager = LogManager(tmp_path / "data", config_for, **kwargs)
        await manager.start()
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        await manager.stop()


async def test_partitions_are_created_lazily_in_topic_dash_partition_dirs(open_manager, tmp_path):
    """The directory appears on first use, named <topic>-<partition>."""
    manager = await open_manager()
    assert manager.get("orders", 3) is None
    assert not (tmp_path / "data" / "orders-3").exists()
    plog = await manager.get_or_create("orders", 3)
    assert (tmp_path / "data" / "orders-3").is_dir()
    assert manager.get("orders", 3) is plog
    assert manager.partitions() == [TopicPartition("orders", 3)]


async def test_concurrent_callers_get_the_same_log(open_manager):
    """Many tasks asking for a new partition at once share one PartitionLog."""
    manager = await open_manager()
    logs = await asyncio.gather(*(manager.get_or_create("t", 0) for _ in range(20)))
    assert all(plog is logs[0] for plog in logs)


async def test_existing_partitions_are_opened_at_start(open_manager):
    """A restarted manager finds every partition and its data, and the committed offsets."""
    manager = await open_manager()
    for p in range(3):
        plog = await manager.get_or_create("my.topic-x", p)
        for _ in range(p + 1):
            await plog.append(batch())
    await manager.offsets.commit("g", [("my.topic-x", 1, 2, "")])
    await manager.stop()
    again = await open_manager()
    assert again.partitions() == [TopicPartition("my.topic-x", p) for p in range(3)]
    assert [again.get("my.topic-x", p).high_watermark for p in range(3)] == [1, 2, 3]
    assert again.offsets.get("g", "my.topic-x", 1).offset == 2


@pytest.mark.parametrize("topic", ["..", "a/b", "x\0y", "", "-" * 250])
async def test_names_that_could_escape_the_data_dir_are_refused(open_manager, tmp_path, topic):
    """Topic names are checked before anything touches the disk."""
    manager = await open_manager()
    with pytest.raises(InvalidRequest):
        await manager.get_or_create(topic, 0)
    assert sorted(os.listdir(tmp_path / "data")) == ["__offsets"]


async def test_negative_partition_is_refused(open_manager):
    """A partition number below zero is an invalid request."""
    manager = await open_manager()
    with pytest.raises(InvalidRequest):
        await manager.get_or_create("t", -1)


async def test_reconfigure_rereads_the_config(open_manager):
    """reconfigure() applies the current config_for to every open log."""
    configs = {"t": LogConfig(flush="never")}
    manager = await open_manager(lambda topic: configs[topic])
    plog = await manager.get_or_create("t", 0)
    configs["t"] = LogConfig(flush="always")
    await manager.reconfigure()
    assert plog.config.flush == "always"
    await plog.append(batch())
    assert plog.stats.fsyncs == 1


async def test_retention_runs_in_the_background(open_manager):
    """The retention task trims logs every retention_check_ms."""
    manager = await open_manager(lambda t: LogConfig(segment_bytes=200, retention_bytes=300), retention_check_ms=10)
    plog = await manager.get_or_create("t", 0)
    for _ in range(20):
        await plog.append(batch(b"x" * 50))
    async with asyncio.timeout(5):
        while plog.size_bytes > 300:
            await asyncio.sleep(0.01)
    assert plog.log_start_offset > 0


async def test_delete_removes_the_partition(open_manager, tmp_path):
    """delete() closes the log and removes its directory."""
    manager = await open_manager()
    await (await manager.get_or_create("t", 0)).append(batch())
    assert await manager.delete("t", 0)
    assert manager.get("t", 0) is None
    assert not (tmp_path / "data" / "t-0").exists()
    assert not await manager.delete("t", 0)


async def test_delete_topic_removes_all_its_partitions(open_manager, tmp_path):
    """delete_topic() removes every partition of that topic and nothing else."""
    manager = await open_manager()
    for p in range(3):
        await manager.get_or_create("gone", p)
    await manager.get_or_create("gone-too", 0)
    assert await manager.delete_topic("gone") == 3
    assert manager.partitions() == [TopicPartition("gone-too", 0)]
    assert sorted(os.listdir(tmp_path / "data")) == ["__offsets", "gone-too-0", "recovery-point-offset-checkpoint"]


async def test_thousands_of_partitions_use_bounded_threads_and_fds(open_manager):
    """2,000 partitions written and fsynced: threads stay few, one fd per active segment."""
    n = 2_000
    fds_before = len(os.listdir("/proc/self/fd"))
    manager = await open_manager(lambda t: LogConfig(flush="interval", flush_interval_ms=10))
    logs = await asyncio.gather(*(manager.get_or_create("t", p) for p in range(n)))
    await asyncio.gather(*(plog.append(batch()) for plog in logs))
    async with asyncio.timeout(30):
        while sum(plog.stats.fsyncs for plog in logs) < n:
            await asyncio.sleep(0.01)
    assert threading.active_count() <= 40
    assert len(os.listdir("/proc/self/fd")) - fds_before <= n + 20
    await manager.stop()
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 5


@pytest.mark.parametrize("length", [236, 249])
async def test_a_topic_with_a_long_name_is_deleted_for_good(open_manager, tmp_path, length):
    """The tombstone of a deleted partition is short, so any valid topic name can be deleted,
    and it stays deleted after a restart."""
    manager = await open_manager()
    topic = "t" * length
    await (await manager.get_or_create(topic, 12)).append(batch())
    assert await manager.delete_topic(topic) == 1
    assert not (tmp_path / "data" / f"{topic}-12").exists()
    await manager.stop()
    again = await open_manager()
    assert again.partitions() == []


async def test_recovery_points_are_checkpointed_and_used_after_a_crash(open_manager, tmp_path):
    """The checkpoint holds every log's fsynced offset; start-up hands it to the log."""
    manager = await open_manager(lambda t: LogConfig(flush="always"), checkpoint_interval_ms=10)
    plog = await manager.get_or_create("t", 0)
    for _ in range(5):
        await plog.append(batch())
    assert plog.recovery_point == 5
    async with asyncio.timeout(5):
        while read_recovery_points(tmp_path / "data").points != {TopicPartition("t", 0): 5}:
            await asyncio.sleep(0.01)
    await plog.append(batch())
    await manager.stop()
    assert read_recovery_points(tmp_path / "data") == ({TopicPartition("t", 0): 6}, True)
    again = await open_manager()
    assert again.get("t", 0).recovery_point == 6


async def test_committed_offsets_above_a_truncated_log_are_clamped(open_manager, tmp_path, caplog):
    """A committed offset left above the high watermark by a lost tail is clamped to it, with a WARNING."""
    manager = await open_manager()
    plog = await manager.get_or_create("t", 0)
    for _ in range(10):
        await plog.append(batch())
    await manager.offsets.commit("g", [("t", 0, 10, "meta"), ("other", 0, 3, "")])
    await manager.offsets.commit("h", [("t", 0, 4, "")])
    await manager.stop()
    d = tmp_path / "data" / "t-0"
    (d / CLEAN_SHUTDOWN).unlink()
    log_file = d / "00000000000000000000.log"
    data = log_file.read_bytes()
    log_file.write_bytes(data[: len(data) * 6 // 10 + 3])  # a power cut took the tail
    with caplog.at_level(logging.WARNING):
        again = await open_manager()
    hw = again.get("t", 0).high_watermark
    assert 4 < hw < 10
    assert again.offsets.get("g", "t", 0) == (hw, "meta")
    assert again.offsets.get("g", "other", 0).offset == 3  # no log here: left alone
    assert again.offsets.get("h", "t", 0).offset == 4
    assert f"group g had committed offset 10 of t/0, above its high watermark {hw}" in caplog.text
    await again.stop()
    third = await open_manager()
    assert third.offsets.get("g", "t", 0).offset == hw  # the clamp was committed
