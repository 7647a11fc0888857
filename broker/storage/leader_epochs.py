"""The leader-epoch cache of one replica: at which offset each leader epoch began.

Kafka's ``LeaderEpochFileCache`` (KIP-101). A follower that becomes one (after a
restart, or when the leader changes) asks the leader where its own latest epoch ended
on the leader, and truncates its log there before it fetches: a high watermark is not
a safe truncation point, an epoch's end is. The leader answers from this cache.

``<partition dir>/leader-epoch-checkpoint``: one record framed as in ``durable``,
msgpack payload ``[[epoch, start_offset], ...]`` with both strictly increasing. It is
written (fsynced, temporary file and rename) before the first frame of a new epoch is
written, so an epoch found in a frame is always in the file; it is cut with the log
(``truncate_from``). Missing or unreadable, it is rebuilt from the frame headers.
Entries at or past the log end are dropped when the log is opened (an epoch was
recorded, then the process died before its first frame reached the disk).
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Iterable
from pathlib import Path

from .durable import read_record, write_record

log = logging.getLogger(__name__)

FILE_NAME = "leader-epoch-checkpoint"
UNDEFINED = -1  # no epoch, no offset: Kafka's UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET


class LeaderEpochCache:
    """``epoch -> start offset`` of one replica's log, kept in ``directory``. Blocking file I/O."""

    def __init__(self, directory: Path, entries: list[tuple[int, int]] | None = None):
        self.path = Path(directory) / FILE_NAME
        self._epochs: list[int] = []
        self._starts: list[int] = []
        for epoch, start in entries or ():
            self._epochs.append(epoch)
            self._starts.append(start)

    @classmethod
    def load(cls, directory: Path, log_end: int, headers: Iterable) -> LeaderEpochCache:
        """The cache of the log in ``directory`` ending at ``log_end``.

        ``headers`` (an iterable of frame headers, read only if the file is missing or
        unreadable) rebuilds it from the log.
        """
        cache = cls(directory)
        try:
            entries = read_record(cache.path)
            cache = cls(directory, [(int(e), int(s)) for e, s in entries])
        except FileNotFoundError:
            cache._rebuild(headers)
        except (ValueError, TypeError) as exc:
            log.warning("%s is unreadable (%s): rebuilding it from the log", cache.path, exc)
            cache._rebuild(headers)
        if cache._starts and cache._starts[-1] >= log_end:
            cache.truncate_from(log_end)
        return cache

    def _rebuild(self, headers: Iterable) -> None:
        for h in headers:
            if h.leader_epoch > self.latest_epoch:
                self._epochs.append(h.leader_epoch)
                self._starts.append(h.base_offset)
        if self._epochs:
            self._save()

    @property
    def latest_epoch(self) -> int:
        return self._epochs[-1] if self._epochs else UNDEFINED

    def entries(self) -> list[tuple[int, int]]:
        return list(zip(self._epochs, self._starts))

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that ``epoch`` begins at ``start_offset`` (fsynced); False if it is not newer."""
        if epoch <= self.latest_epoch:
            return False
        if self._starts and start_offset < self._starts[-1]:
            raise ValueError(f"epoch {epoch} cannot start at {start_offset}, before epoch {self.latest_epoch}")
        if self._starts and start_offset == self._starts[-1]:  # the previous epoch wrote nothing
            self._epochs.pop()
            self._starts.pop()
        self._epochs.append(epoch)
        self._starts.append(start_offset)
        self._save()
        return True

    def end_offset_for(self, epoch: int, log_end: int) -> tuple[int, int]:
        """``(largest epoch <= epoch, where it ends)``: the answer to OffsetsForLeaderEpoch.

        The end of an epoch is the start of the next one, or the log end for the latest.
        ``(UNDEFINED, UNDEFINED)`` when ``epoch`` is older than every epoch known.
        """
        i = bisect_right(self._epochs, epoch)
        if i == 0:
            return UNDEFINED, UNDEFINED
        end = self._starts[i] if i < len(self._starts) else log_end
        return self._epochs[i - 1], end

    def truncate_from(self, offset: int) -> None:
        """Forget every epoch that starts at or after ``offset`` (the log was cut there)."""
        i = bisect_right(self._starts, offset - 1)
        if i == len(self._starts):
            return
        del self._epochs[i:], self._starts[i:]
        self._save()

    def _save(self) -> None:
        write_record(self.path, [[e, s] for e, s in zip(self._epochs, self._starts)])
