"""Durable file writes shared by the storage engine: fsync, atomic replace, CRC framing.

A file is durable once its data is fsynced *and* the directory entry that names it is:
``fsync_dir`` after every create and rename. Small state files (producer snapshots,
checkpoints, the committed-offsets snapshot) are written whole with ``write_atomic``:
a temporary file, fsync, rename, fsync of the directory, so a crash leaves either the
old file or the new one.

Records are framed as::

    offset  size  field
    0       4     length   u32  bytes of the payload
    4       4     crc      u32  CRC32C of the payload
    8       ...   payload  msgpack

All integers big-endian.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Any

import msgpack
from crc32c import crc32c

sync_data = getattr(os, "fdatasync", os.fsync)
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # the disk (or a quota) is full
_FRAME = struct.Struct(">II")
_MSGPACK_ERRORS = (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError)


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in FULL_ERRNOS


def fsync_path(path: Path) -> None:
    """fsync a file or directory by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (files created, renamed, deleted) durable."""
    fsync_path(path)


def sync_paths(paths: list[Path]) -> None:
    """fsync each path (blocking); one deleted meanwhile (by retention) needs nothing."""
    for path in paths:
        try:
            fsync_path(path)
        except FileNotFoundError:
            continue


def frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), crc32c(payload)) + payload


def unframe(data: bytes) -> tuple[list, int]:
    """The payloads of the whole, valid records at the start of ``data``, and where they end."""
    out = []
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + length
        if end > len(data) or crc32c(data[pos + _FRAME.size : end]) != crc:
            break
        try:
            out.append(msgpack.unpackb(data[pos + _FRAME.size : end], strict_map_key=False))
        except _MSGPACK_ERRORS:
            break
        pos = end
    return out, pos


def write_atomic(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Replace ``path`` with ``data``: temporary file, fsync, rename, fsync of the directory.

    ``sync=False`` skips both fsyncs, for a file whose loss or tearing only costs work
    (a reader checks the CRC and falls back).
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync:
        fsync_dir(path.parent)


def write_record(path: Path, value: Any, *, sync: bool = True) -> None:
    """``value`` as one framed msgpack record, written with ``write_atomic``."""
    write_atomic(path, frame(msgpack.packb(value)), sync=sync)


def read_record(path: Path) -> Any:
    """The one record of a file written by ``write_record``.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file is not exactly one whole, valid record.
    """
    data = path.read_bytes()
    records, end = unframe(data)
    if len(records) != 1 or end != len(data):
        raise ValueError(f"{path} is not one valid record ({len(data)} bytes)")
    return records[0]
