"""Blocking produce and fetch calls on one partition of a real broker, for fault tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from shoal.client.records import decode_fetch
from shoal.client.structs import Record

BATCH = "application/vnd.shoal.batch"


def post_batch(url: str, body: bytes) -> tuple[int, dict | bytes]:
    """POST a batch body to ``url`` (a .../records URL): (status, ack or problem bytes)."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": BATCH})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def read_all(url: str, offset: int, max_bytes: int = 256 * 1024) -> list[bytes]:
    """Every record value of the partition at ``url`` (.../partitions/P) from ``offset`` to the
    high watermark, fetch by fetch; with ``max_bytes=1``, only the first fetch's."""
    return [r.value for r in read_records(url, offset, max_bytes)]


def read_records(url: str, offset: int, max_bytes: int = 256 * 1024) -> list[Record]:
    """``read_all``, as records (with their offsets)."""
    out: list[Record] = []
    while True:
        req = urllib.request.Request(f"{url}/records?offset={offset}&max_bytes={max_bytes}", headers={"Accept": BATCH})
        with urllib.request.urlopen(req, timeout=10) as resp:
            frames = resp.read()
            hw = int(resp.headers["Shoal-High-Watermark"])
        if offset >= hw:
            return out
        records = list(decode_fetch("t", 0, frames, min_offset=offset))
        assert records and records[0].offset == offset, (offset, hw)
        out += records
        offset = records[-1].offset + 1
        if offset >= hw or max_bytes == 1:
            return out
