"""Opening a partition log at start-up: find its files, recover what a crash may have
damaged, and rebuild the producer table.

After a clean stop (``checkpoint.CLEAN_SHUTDOWN`` present and matching) the active
segment is opened as recorded, without a scan. After a process crash on a machine
that kept running (the checkpoint was written since the last boot), the page cache
kept every completed write: only the tail of the active segment can be torn, and only
that is checked. Otherwise (the machine went down, or no checkpoint) recovery starts at
the segment holding the recovery point (the offset below which everything was fsynced,
from ``checkpoint.RECOVERY_POINTS``) and checks every later segment frame by frame,
sealed ones included: a power cut can tear the tail of a segment sealed just before
it. At the first bad frame the segment is cut and every later segment is deleted, so
offsets stay contiguous. Nothing is fsynced here (after a kill -9 that could mean
writing back seconds of dirty pages before serving): the files checked are handed to
the log's flusher, whose next sync moves the recovery point past them.

The producer table comes from the newest producer snapshot at or below the log end,
with the frame headers after it replayed on top (``producer_state``). The leader-epoch
cache comes from its checkpoint, or from every frame header when that is missing
(``leader_epochs``).

A segment written before frames carried a leader epoch (magic 1) is refused with an
error naming it: there is nothing to convert it to (shoal has no such deployments).
"""

from __future__ import annotations

import logging
import os
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from shoal.client.records import MAGIC_AT, OLD_MAGIC

from .checkpoint import read_clean_shutdown
from .config import LogConfig
from .leader_epochs import LeaderEpochCache
from .producer_state import ProducerTable, delete_snapshots, load_snapshot
from .segment import Segment

log = logging.getLogger(__name__)


@dataclass
class LoadedLog:
    """The segments of a log as start-up found (and repaired) them; the last one is open."""

    segments: list[Segment]
    producers: ProducerTable
    epochs: LeaderEpochCache
    recovery_point: int
    unsynced: list[Path]  # files and directories to fsync before the recovery point may move


def load_log(directory: Path, config: LogConfig, recovery_point: int, now_ms: int, *, same_boot: bool) -> LoadedLog:
    """Open the log in ``directory`` (created when missing). Blocking: run it in a thread.

    ``same_boot``: the machine has not restarted since ``recovery_point`` was recorded.
    """
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    sizes = _scan_files(d)
    interval = config.index_interval_bytes
    segments = [Segment(d, b, size=sizes[b], index_interval_bytes=interval) for b in sorted(sizes)]
    if not segments:
        active = Segment(d, 0, index_interval_bytes=interval)
        active.create()
        delete_snapshots(d)
        return LoadedLog([active], ProducerTable(), LeaderEpochCache.load(d, 0, ()), 0, [d, d.parent])
    _refuse_old_format(segments[0])
    clean = read_clean_shutdown(d)
    active = segments[-1]
    if (
        clean is not None
        and clean["base_offset"] == active.base_offset
        and active.resume(
            size=clean["size"],
            next_offset=clean["next_offset"],
            max_timestamp=clean["max_timestamp"],
            max_ts_offset=clean["max_ts_offset"],
        )
    ):
        try:
            producers = ProducerTable.from_list(clean["producers"])
        except (ValueError, TypeError) as exc:
            log.warning("the producer table of %s is unreadable (%s): replaying the log", d, exc)
            producers = rebuild_producers(segments, now_ms)
        producers.expire(now_ms, config.producer_expiry_ms)
        return LoadedLog(segments, producers, load_epochs(segments), active.next_offset, [])
    segments, checked = _recover(segments, recovery_point, same_boot)
    producers = rebuild_producers(segments, now_ms)
    producers.expire(now_ms, config.producer_expiry_ms)
    epochs = load_epochs(segments)
    return LoadedLog(segments, producers, epochs, min(recovery_point, segments[-1].next_offset), [*checked, d])


def _refuse_old_format(first: Segment) -> None:
    """Stop at a segment of frames without leader epochs (magic 1), before recovery cuts it as corrupt."""
    if first.size < MAGIC_AT + 1:
        return
    with open(first.log_path, "rb") as f:
        f.seek(MAGIC_AT)
        magic = f.read(1)
    if magic and magic[0] == OLD_MAGIC:
        raise RuntimeError(
            f"{first.log_path} holds batches of the old format (magic {OLD_MAGIC}, without leader epochs), "
            f"which this version cannot read: move {first.directory} away (its data cannot be converted)"
        )


def _all_headers(segments: list[Segment]):
    for seg in segments:
        was_open = seg.is_open
        if not was_open:
            seg.open_sealed()
        try:
            yield from (h for _, h in seg.scan(0, seg.size))
        finally:
            if not was_open:
                seg.close()


def load_epochs(segments: list[Segment]) -> LeaderEpochCache:
    """The leader-epoch cache of the log made of ``segments`` (rebuilt from them if need be)."""
    return LeaderEpochCache.load(segments[0].directory, segments[-1].next_offset, _all_headers(segments))


def _scan_files(d: Path) -> dict[int, int]:
    """Base offset -> size of every segment .log; removes leftovers of interrupted work."""
    sizes: dict[int, int] = {}
    indexes = []
    for entry in os.scandir(d):
        stem, _, ext = entry.name.partition(".")
        if ext.endswith(("deleted", "tmp")):
            os.unlink(entry.path)  # left by a crash in the middle of a delete or a rewrite
        elif len(stem) != 20 or not stem.isdigit():
            continue
        elif ext == "log":
            sizes[int(stem)] = entry.stat().st_size
        elif ext in ("index", "timeindex"):
            indexes.append((int(stem), entry.path))
    for base, path in indexes:
        if base not in sizes:
            os.unlink(path)
    return sizes


def _recover(segments: list[Segment], recovery_point: int, same_boot: bool) -> tuple[list[Segment], list[Path]]:
    """Check the segments from the one holding ``recovery_point`` on (only the active one on
    the same boot).

    Returns the segments kept, the last one left open (the active segment), and the
    .log files of the sealed ones checked.
    """
    bases = [s.base_offset for s in segments]
    if same_boot:
        first, check_from = len(segments) - 1, None
    else:
        first, check_from = max(0, bisect_right(bases, recovery_point) - 1), recovery_point
    checked = []
    for i in range(first, len(segments)):
        seg = segments[i]
        file_size = os.path.getsize(seg.log_path)
        seg.recover(check_from=check_from)
        last = i == len(segments) - 1
        if not last and (seg.size < file_size or seg.next_offset != segments[i + 1].base_offset):
            doomed = segments[i + 1 :]
            log.warning(
                "recovery cut %s at offset %d: deleting the %d later segments (offsets %d and up)",
                seg.directory,
                seg.next_offset,
                len(doomed),
                doomed[0].base_offset,
            )
            for later in doomed:
                later.delete_files()
            segments = segments[: i + 1]
            last = True
        if last:
            break
        seg.seal()
        seg.close()
        checked.append(seg.log_path)
    active = segments[-1]
    delete_snapshots(active.directory, above=active.next_offset)
    return segments, checked


def rebuild_producers(segments: list[Segment], now_ms: int) -> ProducerTable:
    """The producer table: the newest snapshot at or below the log end, the log replayed on top."""
    d = segments[0].directory
    end = segments[-1].next_offset
    found = load_snapshot(d, end)
    start, producers = found if found is not None else (segments[0].base_offset, ProducerTable())
    if found is None and len(segments) > 1:
        log.info("no producer snapshot in %s: replaying every segment", d)
    for i, seg in enumerate(segments):
        if i + 1 < len(segments) and segments[i + 1].base_offset <= start:
            continue  # every frame of it is below the snapshot
        was_open = seg.is_open
        if not was_open:
            seg.open_sealed()
        try:
            producers.replay((h for _, h in seg.scan(0, seg.size) if h.base_offset >= start), now_ms)
        finally:
            if not was_open:
                seg.close()
    delete_snapshots(d, below=segments[0].base_offset)
    return producers
