"""Directory entries reach the disk: a file created or renamed is followed by an fsync of its
directory. Observed by wrapping ``os.fsync`` (the real call still runs) and naming each fd."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest

from shoal.broker.broker import _save_installed
from shoal.broker.storage import LogConfig, LogManager, OffsetStore
from shoal.client.records import encode_batch
from shoal.router.topology import parse_topology


class Fsync(NamedTuple):
    path: Path
    entries: tuple[str, ...] | None  # a directory's entries at the time; None for a file


@pytest.fixture
def fsynced(monkeypatch) -> list[Fsync]:
    """Every ``os.fsync`` from now on, in order."""
    calls: list[Fsync] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        calls.append(Fsync(path, tuple(sorted(os.listdir(path))) if path.is_dir() else None))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


async def test_creating_offsets_log_fsyncs_its_directory(tmp_path, fsynced):
    store = OffsetStore(tmp_path / "data" / "__offsets")
    await store.start()
    await store.stop()
    assert Fsync(tmp_path / "data" / "__offsets", ("offsets.log",)) in fsynced
    assert Fsync(tmp_path / "data", ("__offsets",)) in fsynced  # the __offsets entry itself
    fsynced.clear()
    await OffsetStore(tmp_path / "data" / "__offsets").start()  # exists: nothing to make durable
    assert fsynced == []


def test_installing_a_topology_fsyncs_the_rename(tmp_path, fsynced):
    topology = parse_topology("brokers: [{id: 1, url: 'http://127.0.0.1:9', data_dir: d}]\nepoch: 3\n")
    _save_installed(tmp_path, topology)
    assert fsynced[-1] == Fsync(tmp_path, ("topology.json",))  # after the rename of topology.json.tmp


async def test_deleting_a_partition_fsyncs_the_rename_of_its_directory(tmp_path, fsynced):
    manager = LogManager(tmp_path / "data", lambda topic: LogConfig())
    await manager.start()
    await (await manager.get_or_create("t", 0)).append(encode_batch([(None, b"v", None, 1)]))
    fsynced.clear()
    await manager.delete("t", 0)
    data_dir = [c.entries for c in fsynced if c.path == tmp_path / "data"]
    assert any("t-0" not in entries and any(n.endswith(".deleting") for n in entries) for entries in data_dir)
    await manager.stop()
