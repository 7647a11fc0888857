"""When a partition's writes reach the disk, and how far the log is known to be durable.

``Flusher`` applies the flush policy of ``LogConfig.flush``: under ``always`` the writer
calls ``sync`` before acknowledging a group; under ``interval`` a write arms a one-shot
timer that syncs ``flush_interval_ms`` later (no flusher loop to wake when idle); under
``never`` only ``stop`` syncs.

A sync covers, in one job in a thread: the files left behind by segment rolls (the
sealed segment, its indexes, the producer snapshot), the active segment, and the
directories that got new entries. Once it returns, every offset below the one given
is on disk: that is the log's *recovery point*, which the log manager checkpoints
(``checkpoint.RECOVERY_POINTS``) so start-up after a crash checks only what lies
above it. Syncs are serialized, so the recovery point never covers a file whose sync
is still running.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .durable import sync_data, sync_paths
from .segment import Segment

log = logging.getLogger(__name__)


class Flusher:
    """The fsyncs of one partition log. Not thread-safe: use it from the log's event loop.

    Args:
        active: returns the current active segment.
        recovery_point: the offset below which everything is already on disk.
        unsynced: files and directories not yet fsynced (a log created or recovered just now).
        stats: the log's ``LogStats``; each sync counts in its ``fsyncs``.
    """

    def __init__(
        self, name: str, active: Callable[[], Segment], recovery_point: int, unsynced: list[Path], stats
    ):
        self._name = name
        self._active = active
        self.recovery_point = recovery_point
        self._stats = stats
        self._dirty = False
        self._unsynced_dirs = list(unsynced)
        self._unsynced_files: list[Path] = []
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self._interval_s: float | None = None

    @property
    def pending(self) -> bool:
        """Is anything written but not yet fsynced?"""
        return self._dirty or bool(self._unsynced_dirs or self._unsynced_files)

    def configure(self, flush: str, interval_ms: int) -> None:
        self._interval_s = interval_ms / 1000 if flush == "interval" else None

    def written(self) -> None:
        """Note a write not yet fsynced; under ``interval`` arm the timer."""
        self._dirty = True
        if self._interval_s is not None and self._timer is None and self._task is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._due)

    def rolled(self, sealed: list[Path], directory: Path) -> None:
        """Note the files of a roll (the sealed segment's, a snapshot) and the new directory entry."""
        self._unsynced_files.extend(sealed)
        self._unsynced_dirs.append(directory)
        self.written()

    def exclusive(self) -> asyncio.Lock:
        """``async with flusher.exclusive():`` no sync runs meanwhile (held around a truncation)."""
        return self._lock

    def truncated(self, end: int, directory: Path) -> None:
        """Note a truncation to ``end`` (under ``exclusive``): the cut and the deleted files must reach the disk."""
        self.recovery_point = min(self.recovery_point, end)
        self._unsynced_dirs.append(directory)
        self.written()

    def _due(self) -> None:
        self._timer = None
        self._task = asyncio.get_running_loop().create_task(self._interval_sync(), name=f"shoal-flush-{self._name}")

    async def _interval_sync(self) -> None:
        try:
            await self.sync(self._active().next_offset)
        except OSError as exc:
            log.error("background fsync of %s failed: %s", self._name, exc)
        finally:
            self._task = None
            if self.pending and self._interval_s is not None:
                self.written()

    async def sync(self, upto: int) -> None:
        """fsync what is pending; then every offset below ``upto`` is on disk.

        ``upto`` must not exceed what was written to the active segment before the call.
        """
        async with self._lock:
            files, self._unsynced_files = self._unsynced_files, []
            dirs, self._unsynced_dirs = self._unsynced_dirs, []
            self._dirty = False  # a write from now on makes it dirty again
            active = self._active()
            fd = active.detach_fd() if active.is_open else None
            try:
                await asyncio.to_thread(_sync_all, files, fd, dirs)
            except OSError:
                self._unsynced_files = files + self._unsynced_files
                self._unsynced_dirs = dirs + self._unsynced_dirs
                self._dirty = True
                raise
            self._stats.fsyncs += 1
            self.recovery_point = max(self.recovery_point, upto)

    async def stop(self) -> None:
        """Cancel the timer and wait for a sync under way (its error was logged)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def _sync_all(files: list[Path], fd: int | None, dirs: list[Path]) -> None:
    sync_paths(files)
    if fd is not None:
        try:
            sync_data(fd)
        finally:
            os.close(fd)
    sync_paths(dirs)
