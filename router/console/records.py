"""The console's record browser: a few records of one partition, bounded so it never hangs.

A browse reads the newest N records, or N from an offset, or N from the first record at
or after a timestamp. It is bounded three ways: at most ``MAX_COUNT`` records, at most
``max_bytes`` of keys, values and headers (the broker reads at most that many stored bytes
per fetch), and at most ``TIME_S`` seconds; it never long-polls. The answer says which
bound stopped it. The partition's owner is asked with the caller's own token, so the
broker checks the caller's ``consume`` permission again.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass

from shoal.client.errors import InvalidRequest

MODES = ("newest", "offset", "timestamp")
DEFAULT_COUNT = 50
MAX_COUNT = 500
DEFAULT_BYTES = 1 << 20
MAX_BYTES = 4 << 20
TIME_S = 5.0


@dataclass(frozen=True)
class Browse:
    """What to read. ``offset`` is used by mode ``offset``, ``timestamp`` (ms) by mode ``timestamp``."""

    mode: str = "newest"
    count: int = DEFAULT_COUNT
    offset: int = 0
    timestamp: int = 0
    max_bytes: int = DEFAULT_BYTES

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidRequest(f"mode must be one of {', '.join(MODES)}, got {self.mode[:40]!r}", field="mode")
        if not 1 <= self.count <= MAX_COUNT:
            raise InvalidRequest(f"count must be 1..{MAX_COUNT}, got {self.count}", field="count")
        if not 1 <= self.max_bytes <= MAX_BYTES:
            raise InvalidRequest(f"max_bytes must be 1..{MAX_BYTES}, got {self.max_bytes}", field="max_bytes")


def _size(record: dict) -> int:
    size = 0
    for name in ("key", "value"):
        if isinstance(record.get(name), str):
            size += len(record[name].encode())
        elif isinstance(record.get(name + "_b64"), str):
            size += len(base64.b64decode(record[name + "_b64"]))
    for name, value in (record.get("headers") or {}).items():
        size += len(name) + len(value if isinstance(value, str) else value.get("b64", ""))
    return size


async def browse(gateway, topic: str, partition: int, want: Browse, headers: dict | None) -> dict:
    """Read records as ``want`` says from the partition's owner.

    Raises:
        UnknownTopic, UnknownPartition: no such partition.
        BrokerUnavailable: the owner did not answer.
        ShoalApiError: what the owner answered (FORBIDDEN for a caller without ``consume``).
    """
    owner = gateway.topology.owner(topic, partition).id
    base = f"/v1/topics/{topic}/partitions/{partition}"
    records: list[dict] = []
    used = 0
    limited_by: str | None = None
    marks_path = base + "/offsets" + (f"?timestamp={want.timestamp}" if want.mode == "timestamp" else "")
    marks = await gateway.json_call("GET", owner, marks_path, headers=headers)
    start, end = marks["log_start_offset"], marks["high_watermark"]
    if want.mode == "newest":
        first = max(start, end - want.count)
    elif want.mode == "offset":
        first = min(max(want.offset, start), end)
    else:
        first = end if marks.get("offset") is None else marks["offset"]
    position = first
    try:
        async with asyncio.timeout(TIME_S):
            while position < end and len(records) < want.count and used < want.max_bytes:
                path = f"{base}/records?offset={position}&max_bytes={want.max_bytes - used}&max_wait_ms=0"
                answer = await gateway.json_call("GET", owner, path, headers=headers)
                got = [r for r in answer["records"] if r["offset"] < end]
                if not got:
                    break
                position = got[-1]["offset"] + 1
                for record in got:
                    if len(records) == want.count:
                        break
                    if want.mode == "timestamp" and record["timestamp"] < want.timestamp:
                        continue
                    records.append(record)
                    used += _size(record)
    except TimeoutError:
        limited_by = "time"
    next_offset = records[-1]["offset"] + 1 if records else position
    if limited_by is None and next_offset < end:
        limited_by = "count" if len(records) >= want.count else "bytes" if used >= want.max_bytes else None
    return {
        "topic": topic,
        "partition": partition,
        "mode": want.mode,
        "first_offset": first,
        "next_offset": next_offset,
        "high_watermark": end,
        "log_start_offset": start,
        "records": records,
        "limited_by": limited_by,
        "limits": {"count": want.count, "max_bytes": want.max_bytes, "time_ms": int(TIME_S * 1000)},
    }
