"""A real broker on a small tmpfs: a full disk answers 507 STORAGE_FULL, leaves no torn data,
and writing resumes once space returns (a file deleted, the filesystem grown).

Needs ``mount -t tmpfs`` (root with CAP_SYS_ADMIN); skipped with the reason elsewhere.
The RLIMIT_FSIZE variant in tests/broker/test_storage_full.py runs everywhere.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from shoal.client.errors import ShoalError, StorageFull
from shoal.client.records import decode_fetch, encode_batch, iter_frames
from tests.faults.partition_http import post_batch, read_all
from tests.harness import http_json

BATCH_VALUE = 16 * 1024


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs at tmp_path/disk, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(url: str, acked: list[bytes]) -> dict:
    """Append 16 KiB records until the broker refuses one; return the refusal's problem."""
    for _ in range(1000):
        value = f"{len(acked)}:".encode().ljust(BATCH_VALUE, b"x")
        status, answer = post_batch(url + "/records", encode_batch([(None, value, None, None)]))
        if status != 200:
            return {"status": status, **json.loads(answer)}
        acked.append(value)
    raise AssertionError("the disk never filled up")


def test_full_disk_is_507_and_recovers_when_space_returns(cluster_factory, small_disk):
    cluster = cluster_factory(1, {"t": {"partitions": 1, "flush": "always"}}, start=False)
    cluster.config["brokers"][0]["data_dir"] = str(small_disk / "broker-1")
    cluster.config_path.write_text(yaml.safe_dump(cluster.config, sort_keys=False))
    cluster.start()
    url = f"{cluster.url(1)}/v1/topics/t/partitions/0"
    ballast = small_disk / "ballast"
    ballast.write_bytes(b"b" * (512 * 1024))
    acked: list[bytes] = []

    problem = fill(url, acked)
    assert problem["status"] == 507 and problem["code"] == "STORAGE_FULL", problem
    err = ShoalError.from_problem(problem)
    assert isinstance(err, StorageFull) and err.retriable
    assert len(acked) > 10
    status, offsets = http_json("GET", url + "/offsets")
    assert offsets["high_watermark"] == len(acked)  # the refused append moved nothing
    assert http_json("GET", cluster.url(1) + "/v1/health")[0] == 200
    status, answer = http_json("PUT", f"{cluster.url(1)}/v1/groups/g/topics/t/partitions/0/offset", {"offset": 1})
    assert status == 200 or (status, answer["code"]) == (507, "STORAGE_FULL")

    ballast.unlink()  # space returns: a file deleted
    status, ack = post_batch(url + "/records", encode_batch([(None, b"after delete", None, None)]))
    assert (status, ack["base_offset"]) == (200, len(acked))
    acked.append(b"after delete")

    problem = fill(url, acked)
    assert problem["code"] == "STORAGE_FULL"
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)  # space returns: a bigger disk
    status, ack = post_batch(url + "/records", encode_batch([(None, b"after remount", None, None)]))
    assert (status, ack["base_offset"]) == (200, len(acked))
    acked.append(b"after remount")

    # nothing torn on disk: a kill -9 and restart cuts nothing and serves every acknowledged record
    cluster.kill(1)
    cluster.start(1)
    assert read_all(url, 0) == acked
    assert "recovery cut" not in cluster.log_path(1).read_text()
    log_files = sorted((small_disk / "broker-1" / "t-0").glob("*.log"))
    stored = b"".join(p.read_bytes() for p in log_files)
    assert [r.value for r in decode_fetch("t", 0, stored)] == acked
    assert sum(len(frame) for _, frame in iter_frames(stored)) == len(stored)  # whole frames only
