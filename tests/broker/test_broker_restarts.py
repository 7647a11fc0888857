"""Storage faults seen through a real broker process: kill -9 after segment rolls, a power
cut that tears a sealed segment, a segment roll that cannot open its file."""

from __future__ import annotations

import http.client
import json
import os
import resource
import time
from pathlib import Path

from shoal.broker.storage.checkpoint import CLEAN_SHUTDOWN, RECOVERY_POINTS, boot_id, read_recovery_points
from shoal.broker.storage.durable import read_record, write_record
from shoal.client.records import encode_batch, iter_frames
from shoal.client.structs import TopicPartition
from tests.faults.partition_http import BATCH, post_batch, read_all
from tests.harness import http_json


def _partition_dir(cluster, topic: str = "t") -> Path:
    return Path(cluster.config["brokers"][0]["data_dir"]) / f"{topic}-0"


def test_a_retried_batch_is_not_written_twice_after_a_roll_and_kill_9(cluster_factory):
    """P1 writes sequence 0 at the end of segment 0, P2's append rolls the log, kill -9:
    after the restart P1's retry of sequence 0 gets its original offset and is not stored again."""
    cluster = cluster_factory(1, {"t": {"partitions": 1, "flush": "always", "segment_bytes": 1}})
    url = f"{cluster.url(1)}/v1/topics/t/partitions/0/records"
    p1 = encode_batch([(None, b"p1-0", None, None)], producer_id=1, base_sequence=0)
    p2 = encode_batch([(None, b"p2-0", None, None)], producer_id=2, base_sequence=0)
    assert post_batch(url, p1) == (200, {"base_offset": 0, "count": 1, "duplicate": False})
    assert post_batch(url, p2)[1]["base_offset"] == 1
    assert len(list(_partition_dir(cluster).glob("*.log"))) == 2  # P2's append rolled the log

    cluster.kill(1)
    cluster.start(1)
    assert post_batch(url, p1) == (200, {"base_offset": 0, "count": 1, "duplicate": True})
    assert read_all(url.removesuffix("/records"), 0) == [b"p1-0", b"p2-0"]
    p1_next = encode_batch([(None, b"p1-1", None, None)], producer_id=1, base_sequence=1)
    assert post_batch(url, p1_next)[1]["base_offset"] == 2


def test_a_torn_sealed_segment_is_cut_and_later_segments_go(cluster_factory):
    """A power cut under flush: never tore the tail of a sealed segment. The restarted broker
    serves every whole record before the tear, deletes the later segments, clamps the
    committed offset above the new end (saying so), and appends after it."""
    cluster = cluster_factory(1, {"t": {"partitions": 1, "flush": "never", "segment_bytes": 2048}})
    part = f"{cluster.url(1)}/v1/topics/t/partitions/0"
    acked = []
    for i in range(60):
        value = f"{i}:".encode().ljust(200, b"x")
        status, ack = post_batch(part + "/records", encode_batch([(None, value, None, None)]))
        assert (status, ack["base_offset"]) == (200, i)
        acked.append(value)
    assert http_json("PUT", f"{cluster.url(1)}/v1/groups/g/topics/t/partitions/0/offset", {"offset": 60})[0] == 200
    data_dir = Path(cluster.config["brokers"][0]["data_dir"])
    deadline = time.monotonic() + 10
    while TopicPartition("t", 0) not in read_recovery_points(data_dir).points:  # flush: never, so its point is 0
        assert time.monotonic() < deadline, "no recovery-point checkpoint"
        time.sleep(0.05)
    cluster.kill(1)

    d = _partition_dir(cluster)
    logs = sorted(d.glob("*.log"))
    assert len(logs) >= 4
    torn = logs[1]
    frames = [h for h, _ in iter_frames(torn.read_bytes(), check_crc=False)]
    kept = len(frames) // 2
    cut_at = sum(h.size for h in frames[:kept]) + frames[kept].size // 2
    os.truncate(torn, cut_at)  # the tail the disk never got
    assert not (d / CLEAN_SHUTDOWN).exists()
    _as_after_a_reboot(d.parent)
    cluster.start(1)

    end = frames[kept].base_offset
    assert read_all(part, 0) == acked[:end]
    assert sorted(d.glob("*.log")) == logs[:2]
    status, committed = http_json("GET", f"{cluster.url(1)}/v1/groups/g/topics/t/partitions/0/offset")
    assert (committed["offset"], committed["high_watermark"]) == (end, end)
    text = cluster.log_path(1).read_text()
    assert f"deleting the {len(logs) - 2} later segments" in text
    assert f"committed offset 60 of t/0, above its high watermark {end}" in text
    status, ack = post_batch(part + "/records", encode_batch([(None, b"after", None, None)]))
    assert (status, ack["base_offset"]) == (200, end)


def _as_after_a_reboot(data_dir: Path) -> None:
    """Make the recovery-point checkpoint look written before the last boot, as after a power cut."""
    path = data_dir / RECOVERY_POINTS
    state = read_record(path)
    assert state["boot_id"] == boot_id()
    write_record(path, {**state, "boot_id": "an earlier boot"})


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None, ctype: str = BATCH):
    conn.request(method, path, body=body, headers={"Content-Type": ctype} if body else {})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def _lowest_free_fd(pid: int) -> int:
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    return next(fd for fd in range(len(used) + 1) if fd not in used)


def test_a_roll_that_cannot_open_its_segment_is_507_and_the_writer_lives(cluster_factory):
    """With no file descriptor left (RLIMIT_NOFILE lowered on the running broker), the append
    that must roll gets 507 STORAGE_FULL and health lists the partition; with descriptors
    back, the next append rolls and is written where it belongs."""
    cluster = cluster_factory(1, {"t": {"partitions": 1, "flush": "never", "segment_bytes": 1}})
    pid = cluster.procs[1].pid
    path = "/v1/topics/t/partitions/0/records"
    conn = http.client.HTTPConnection("127.0.0.1", cluster.ports[1], timeout=10)  # opened before the limit
    try:
        _exhaust_fds_then_return_them(conn, pid, path)
    finally:
        conn.close()
    assert read_all(f"{cluster.url(1)}/v1/topics/t/partitions/0", 0) == [b"first", b"after"]


def _exhaust_fds_then_return_them(conn: http.client.HTTPConnection, pid: int, path: str) -> None:
    assert _request(conn, "POST", path, encode_batch([(None, b"first", None, None)]))[0] == 200
    assert _request(conn, "GET", "/v1/health")[1]["status"] == "ok"
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    deadline = time.monotonic() + 10
    while True:  # the broker may hold a transient fd while we look: retry until the roll meets the limit
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (_lowest_free_fd(pid), limits[1]))
        status, problem = _request(conn, "POST", path, encode_batch([(None, b"refused", None, None)]))
        if status != 200 or time.monotonic() > deadline:
            break
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    try:
        assert (status, problem["code"]) == (507, "STORAGE_FULL"), problem
        assert "Too many open files" in problem["detail"]
        status, health = _request(conn, "GET", "/v1/health")
        assert status == 200 and health["status"] == "degraded"
        [failed] = health["failed_partitions"]
        assert (failed["topic"], failed["partition"]) == ("t", 0) and "STORAGE_FULL" in failed["error"]
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    status, ack = _request(conn, "POST", path, encode_batch([(None, b"after", None, None)]))
    assert (status, ack["base_offset"]) == (200, 1)
    health = _request(conn, "GET", "/v1/health")[1]
    assert (health["status"], "failed_partitions" in health) == ("ok", False)
