"""Replicas coming back on real brokers and a real etcd:

- a leader restarted with records no follower has starts from its checkpointed high
  watermark (``replication-offset-checkpoint``), not from its log end: a consumer
  does not see those records until the followers have them;
- a follower whose log ends below its leader's log start (retention deleted what it
  lacks) empties its log and fetches from the leader's log start.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from shoal.broker.storage import PartitionLog
from shoal.broker.storage.checkpoint import read_high_watermarks
from shoal.broker.storage.config import LogConfig
from shoal.client.records import encode_batch
from shoal.client.structs import TopicPartition
from shoal.router.topology import load_topology
from tests.faults.checker import BROKERS, TOPIC, high_watermark, in_sync, produce, stored_frames
from tests.harness import http_json
from tests.metadata.helpers import poll


@pytest.fixture
def replicated(cluster_factory, etcd_server, cluster_name):
    """Three brokers, one partition at factor 3, not started; a lag time no test waits out."""
    return cluster_factory(
        3, {TOPIC: 1}, name=cluster_name, start=False,
        metadata={"etcd": [etcd_server.url], "lease_ttl_ms": 2000, "replica_lag_time_max_ms": 60000},
        replication_factor=3, min_insync_replicas=1,
    )  # fmt: skip


def data_dir(cluster, broker: int) -> Path:
    return Path(cluster.config["brokers"][broker - 1]["data_dir"])


def offsets_of(cluster, broker: int):
    try:
        status, body = http_json("GET", f"{cluster.url(broker)}/v1/topics/{TOPIC}/partitions/0/offsets", timeout=2)
    except OSError:
        return None
    return body if status == 200 else None


async def test_a_restarted_leader_starts_from_its_checkpointed_high_watermark(replicated):
    c = replicated
    c.start()
    leader = (await in_sync(c))["leader"]
    followers = [b for b in BROKERS if b != leader]
    for i in range(5):
        assert (await asyncio.to_thread(produce, c.url(leader), f"both-{i}", acks="all"))[0] == 200
    tp = TopicPartition(TOPIC, 0)
    await poll(lambda: asyncio.to_thread(lambda: read_high_watermarks(data_dir(c, leader)).get(tp) == 5), timeout=20)
    for f in followers:
        c.procs[f].send_signal(signal.SIGSTOP)
    try:
        for i in range(3):  # the leader alone has these: its followers sleep (and stay in the ISR)
            assert (await asyncio.to_thread(produce, c.url(leader), f"alone-{i}", acks="1"))[0] == 200
        c.kill(leader)
        await asyncio.to_thread(c.start, leader)
        back = await poll(lambda: asyncio.to_thread(offsets_of, c, leader), timeout=30)
        assert back["high_watermark"] == 5  # not its log end, 8: no follower has offsets 5-7
        status, body = await asyncio.to_thread(
            http_json, "GET", f"{c.url(leader)}/v1/topics/{TOPIC}/partitions/0/records?offset=5"
        )
        assert status == 200 and body["records"] == []
    finally:
        for f in followers:
            c.procs[f].send_signal(signal.SIGCONT)
    await poll(lambda: asyncio.to_thread(lambda: high_watermark(c.url(leader)) == 8), timeout=30)


def seed_log(directory: Path, records: int) -> int:
    """Write ``records`` records in small segments, then let retention delete all but the
    last segment; return the log start offset."""

    async def run():
        config = LogConfig(segment_bytes=512, retention_bytes=1, flush="always")
        async with PartitionLog(directory, TOPIC, 0, config) as plog:
            for i in range(records):
                await plog.append(encode_batch([(None, b"old-%04d" % i, None, None)]))
            await plog.enforce_retention()
            return plog.log_start_offset

    return asyncio.run(run())


async def test_a_follower_below_the_leaders_log_start_starts_again_there(replicated):
    c = replicated
    leader = load_topology(c.config_path).preferred_leader(TOPIC, 0)
    log_start = await asyncio.to_thread(seed_log, data_dir(c, leader) / f"{TOPIC}-0", 60)
    assert log_start > 0
    c.start()
    state = await in_sync(c)
    assert state["leader"] == leader, state

    async def acknowledged():  # the leader may still be taking up its epoch when the ISR is full
        return (await asyncio.to_thread(produce, c.url(leader), "new", acks="all"))[0] == 200

    await poll(acknowledged, timeout=20)

    def copied():
        frames = [stored_frames(c, b) for b in BROKERS]
        return frames if frames[0] == frames[1] == frames[2] else None

    frames = await poll(lambda: asyncio.to_thread(copied), timeout=30)
    assert int.from_bytes(frames[0][0][:8], "big") == log_start
    for b in BROKERS:
        if b != leader:
            assert "starting again from there" in c.tail(b, 200)
