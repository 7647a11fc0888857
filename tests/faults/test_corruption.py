"""Damaged storage under a real broker process: after kill -9 the files are damaged the way a
crash or an operator could leave them, and the restarted broker serves every whole record.

Unit tests of the same recoveries live in tests/broker/test_recovery.py; these go through
the process: start-up recovery, the HTTP fetch path, index lookups and timestamp lookups.
"""

from __future__ import annotations

import random
import struct
import time
from pathlib import Path

import pytest

from shoal.broker.storage.checkpoint import read_recovery_points
from shoal.client.records import encode_batch
from shoal.client.structs import TopicPartition
from tests.faults.partition_http import post_batch, read_all
from tests.harness import http_json

BATCHES = 240
BASE_TS = 1_700_000_000_000


def _logs(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def torn_tail(d: Path) -> str:
    frame = encode_batch([(None, b"never acknowledged" * 20, None, None)])
    with open(_logs(d)[-1], "ab") as f:
        f.write(frame[: len(frame) // 2])
    return "recovery cut"


def zero_tail(d: Path) -> str:
    with open(_logs(d)[-1], "ab") as f:
        f.write(bytes(4096))
    return "recovery cut"


def stale_active_index(d: Path) -> str:
    """An index that outlived a cut log: entries past the end, then a torn entry."""
    active = _logs(d)[-1]
    size = active.stat().st_size
    active.with_suffix(".index").write_bytes(
        struct.pack(">IIII", 1, size // 2, 2, size + 4096) + b"\x00\x00\x01"
    )
    return ""


def truncated_sealed_index(d: Path) -> str:
    index = _logs(d)[0].with_suffix(".index")
    raw = index.read_bytes()
    index.write_bytes(raw[: len(raw) // 2 - 3])
    return "rebuilding the indexes"


def missing_indexes(d: Path) -> str:
    for path in [*d.glob("*.index"), *d.glob("*.timeindex")]:
        path.unlink()
    return "rebuilding the indexes"


@pytest.mark.parametrize("damage", [torn_tail, zero_tail, stale_active_index, truncated_sealed_index, missing_indexes])
def test_restarted_broker_serves_every_whole_record(cluster_factory, damage):
    """Every acknowledged record is served from any offset; timestamp lookups and appends carry on."""
    cluster = cluster_factory(1, {"t": {"partitions": 1, "flush": "always", "segment_bytes": 48 * 1024}})
    url = f"{cluster.url(1)}/v1/topics/t/partitions/0"
    rng = random.Random(7)
    acked: dict[int, bytes] = {}
    for i in range(BATCHES):
        values = [f"{i}.{j}:".encode() + bytes(rng.randrange(256) for _ in range(rng.randint(50, 400)))
                  for j in range(rng.randint(1, 3))]
        body = encode_batch([(None, v, None, BASE_TS + i) for v in values])
        status, ack = post_batch(url + "/records", body)
        assert status == 200, ack
        acked.update((ack["base_offset"] + j, v) for j, v in enumerate(values))
    hw = len(acked)
    data_dir = Path(cluster.config["brokers"][0]["data_dir"])
    directory = data_dir / "t-0"
    assert len(_logs(directory)) >= 3, "the test wants sealed segments too"
    deadline = time.monotonic() + 10  # start-up then checks only what lies above the recovery point
    while read_recovery_points(data_dir).points.get(TopicPartition("t", 0)) != hw:
        assert time.monotonic() < deadline, "the recovery point was never checkpointed"
        time.sleep(0.05)
    cluster.kill(1)
    expect_in_log = damage(directory)
    cluster.start(1)

    assert read_all(url, 0) == [acked[o] for o in range(hw)]
    for offset in rng.sample(range(hw), 25):
        assert read_all(url, offset, max_bytes=1)[0] == acked[offset], offset
    status, found = http_json("GET", url + "/offsets?timestamp=" + str(BASE_TS + BATCHES // 2))
    assert status == 200 and acked[found["offset"]].startswith(f"{BATCHES // 2}.0:".encode())
    assert found["high_watermark"] == hw
    status, ack = post_batch(url + "/records", encode_batch([(None, b"after", None, None)]))
    assert (status, ack["base_offset"]) == (200, hw)
    if expect_in_log:
        assert expect_in_log in cluster.log_path(1).read_text()
