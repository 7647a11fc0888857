"""Every partition log of one broker, plus its committed offsets.

Layout of a data dir::

    <data_dir>/<topic>-<partition>/             one PartitionLog (segments, indexes, snapshots)
    <data_dir>/__offsets/                       the OffsetStore
    <data_dir>/recovery-point-offset-checkpoint the recovery point of every log (``checkpoint``)
    <data_dir>/replication-offset-checkpoint    the high watermark of every replica's log
    <data_dir>/<hex>.deleting/                  a partition being deleted (removed at start-up)

Background work costs nothing when idle: under ``flush="interval"`` each log arms a
one-shot timer when a write makes it dirty (so there is no flusher loop to wake); one
task visits the logs every ``retention_check_ms`` (retention, producer expiry) and
one writes the recovery points (and the replicas' high watermarks) every
``checkpoint_interval_ms`` when they moved.
fsyncs run in the default executor, so 10,000 partitions cost memory and file
descriptors (one per active segment, plus a shared LRU of sealed ones), not threads.

Committed offsets above a log's high watermark (the log lost its tail to a crash
under ``flush: interval``/``never``, or to recovery's truncation) are clamped to the
high watermark at start-up, with a WARNING, and the clamped offset is committed: a
consumer then reads the records written from there on instead of skipping them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from shoal.client.errors import InternalError, InvalidRequest
from shoal.client.names import check_name, is_valid_name
from shoal.client.structs import TopicPartition

from .checkpoint import read_high_watermarks, read_recovery_points, write_high_watermarks, write_recovery_points
from .config import LogConfig
from .durable import fsync_dir
from .offsets import OffsetStore
from .partition_log import PartitionLog
from .segment import OpenSegments

log = logging.getLogger(__name__)

OFFSETS_DIR = "__offsets"
_LOADERS = 4  # threads that open existing logs at start
_DELETING = ".deleting"  # suffix of a partition directory being removed: <32 hex digits>.deleting


class LogManager:
    """Opens, creates and closes the partition logs under ``data_dir``.

    Args:
        data_dir: the broker's data directory (created if missing).
        config_for: topic name -> its LogConfig; read when a log opens and on ``reconfigure()``.
        retention_check_ms: how often retention (and producer expiry) runs over every log.
        checkpoint_interval_ms: how often the recovery points are written when they moved.
        open_sealed_segments: how many sealed segments (of all logs) stay open for reads.

    Not thread-safe: use it from the event loop that started it.

    Example::

        logs = LogManager(Path("data"), lambda topic: LogConfig())
        await logs.start()
        plog = await logs.get_or_create("orders", 0)
        await logs.offsets.commit("billing", [("orders", 0, 10, "")])
        await logs.stop()
    """

    def __init__(
        self,
        data_dir: Path,
        config_for: Callable[[str], LogConfig],
        *,
        retention_check_ms: int = 60_000,
        checkpoint_interval_ms: int = 1_000,
        open_sealed_segments: int = 256,
    ):
        self.data_dir = Path(data_dir)
        self.config_for = config_for
        self.retention_check_ms = retention_check_ms
        self.checkpoint_interval_ms = checkpoint_interval_ms
        self.offsets = OffsetStore(self.data_dir / OFFSETS_DIR)
        self._open_segments = OpenSegments(open_sealed_segments)
        self._logs: dict[TopicPartition, PartitionLog] = {}
        self._creating: dict[TopicPartition, asyncio.Task] = {}
        self._retention: asyncio.Task | None = None
        self._checkpointer: asyncio.Task | None = None
        self._checkpointed: dict[TopicPartition, int] = {}
        self._hw_at_start: dict[TopicPartition, int] = {}  # replication-offset-checkpoint as read at start
        self._hw_checkpointed: dict[TopicPartition, int] = {}
        self._running = False
        self._real_data_dir: Path | None = None

    async def __aenter__(self) -> LogManager:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open (and recover) every partition found in ``data_dir``. Idempotent."""
        if self._running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _raise_fd_limit()
        await self.offsets.start()
        checkpoint = await asyncio.to_thread(read_recovery_points, self.data_dir)
        self._hw_at_start = await asyncio.to_thread(read_high_watermarks, self.data_dir)
        self._hw_checkpointed = dict(self._hw_at_start)
        found = await asyncio.to_thread(self._scan_data_dir)
        logs = [
            self._new_log(tp, checkpoint.points[tp], same_boot=checkpoint.same_boot) if tp in checkpoint.points
            else self._new_log(tp)
            for tp in found
        ]
        # recover in a few threads, a batch each: one thread hop per log costs more than the IO
        await asyncio.gather(*(asyncio.to_thread(_load_all, logs[i::_LOADERS]) for i in range(_LOADERS)))
        await asyncio.gather(*(plog.start() for plog in logs))
        self._logs.update((TopicPartition(plog.topic, plog.partition), plog) for plog in logs)
        self._running = True
        await self._clamp_committed_offsets()
        await self.checkpoint_recovery_points()
        loop = asyncio.get_running_loop()
        self._retention = loop.create_task(self._retention_loop(), name="shoal-retention")
        self._checkpointer = loop.create_task(self._checkpoint_loop(), name="shoal-recovery-points")
        log.info("opened %d partition logs in %s", len(logs), self.data_dir)

    async def _clamp_committed_offsets(self) -> None:
        """Commit the high watermark for every committed offset above it (see the module doc)."""
        for group in self.offsets.groups():
            clamped = []
            for tp, committed in self.offsets.group_offsets(group).items():
                plog = self._logs.get(tp)
                if plog is not None and committed.offset > plog.high_watermark:
                    log.warning(
                        "group %s had committed offset %d of %s, above its high watermark %d after recovery: "
                        "clamped to %d (records written from there on will be read)",
                        group, committed.offset, plog.name, plog.high_watermark, plog.high_watermark,
                    )
                    clamped.append((tp.topic, tp.partition, plog.high_watermark, committed.metadata))
            if clamped:
                await self.offsets.commit(group, clamped)

    def _scan_data_dir(self) -> list[TopicPartition]:
        found = []
        for entry in os.scandir(self.data_dir):
            if not entry.is_dir() or entry.name == OFFSETS_DIR:
                continue
            if entry.name.endswith(_DELETING):
                shutil.rmtree(entry.path, ignore_errors=True)
                continue
            topic, _, number = entry.name.rpartition("-")
            if is_valid_name(topic) and number.isdigit() and str(int(number)) == number:
                found.append(TopicPartition(topic, int(number)))
            else:
                log.warning("ignoring %s: not a <topic>-<partition> directory", entry.path)
        return sorted(found)

    async def stop(self) -> None:
        """Stop the background task, then every log (each drains and fsyncs). Idempotent."""
        if not self._running:
            return
        self._running = False
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
        pending = list(self._creating.values())
        await asyncio.gather(*pending, return_exceptions=True)
        logs = list(self._logs.values())
        results = await asyncio.gather(*(plog.stop() for plog in logs), return_exceptions=True)
        for plog, result in zip(logs, results):
            if isinstance(result, BaseException):
                log.error("could not close %s cleanly: %r", plog, result)
        try:
            await self.checkpoint_recovery_points()
        except OSError as exc:
            log.error("could not write the recovery points in %s: %s", self.data_dir, exc)
        self._logs.clear()
        await self.offsets.stop()

    def partition_dir(self, topic: str, partition: int) -> Path:
        """Where a partition's segments live; refuses names that could leave ``data_dir``."""
        check_name(topic, "topic")
        if not isinstance(partition, int) or partition < 0:
            raise InvalidRequest(f"partition must be a non-negative integer, got {partition!r}", field="partition")
        path = self.data_dir / f"{topic}-{partition}"
        if self._real_data_dir is None:
            self._real_data_dir = self.data_dir.resolve()
        if path.resolve().parent != self._real_data_dir:
            raise InvalidRequest(f"topic {topic!r} does not map to a directory inside the data dir", field="topic")
        return path

    def _new_log(self, tp: TopicPartition, recovery_point: int = 0, *, same_boot: bool = False) -> PartitionLog:
        return PartitionLog(
            self.partition_dir(tp.topic, tp.partition),
            tp.topic,
            tp.partition,
            self.config_for(tp.topic),
            open_segments=self._open_segments,
            recovery_point=recovery_point,
            same_boot=same_boot,
        )

    def get(self, topic: str, partition: int) -> PartitionLog | None:
        """The open log of a partition, or None when this broker has none yet."""
        return self._logs.get(TopicPartition(topic, partition))

    async def get_or_create(self, topic: str, partition: int) -> PartitionLog:
        """The log of a partition, opened (and its directory created) on first use.

        Concurrent callers for the same partition get the same instance.
        """
        tp = TopicPartition(topic, partition)
        plog = self._logs.get(tp)
        if plog is not None:
            return plog
        if not self._running:
            raise InternalError("the broker's storage is not running")
        task = self._creating.get(tp)
        if task is None:
            plog = self._new_log(tp)  # validates the name before anything touches the disk
            task = asyncio.get_running_loop().create_task(self._open_log(tp, plog))
            self._creating[tp] = task
        return await asyncio.shield(task)

    async def _open_log(self, tp: TopicPartition, plog: PartitionLog) -> PartitionLog:
        try:
            if not plog.directory.exists():
                plog.load()  # a new partition: a mkdir and one file, cheaper than a thread hop
            await plog.start()
            self._logs[tp] = plog
            return plog
        finally:
            del self._creating[tp]

    def partitions(self) -> list[TopicPartition]:
        return sorted(self._logs)

    def logs(self) -> list[PartitionLog]:
        return [self._logs[tp] for tp in sorted(self._logs)]

    async def reconfigure(self) -> None:
        """Re-read ``config_for`` for every open log (after a topology change)."""
        for tp, plog in self._logs.items():
            plog.update_config(self.config_for(tp.topic))

    async def delete(self, topic: str, partition: int) -> bool:
        """Close a partition's log and remove its data; False when there was none.

        The directory is first renamed to a short tombstone (``<32 hex digits>.deleting``,
        whatever the length of the topic name) and that rename is fsynced, so a crash
        part-way leaves nothing that start-up would open again.
        """
        path = self.partition_dir(topic, partition)
        tp = TopicPartition(topic, partition)
        plog = self._logs.pop(tp, None)
        if plog is not None:
            await plog.stop()
        if not path.exists():
            return plog is not None
        doomed = path.with_name(f"{uuid.uuid4().hex}{_DELETING}")
        os.replace(path, doomed)
        await asyncio.to_thread(fsync_dir, self.data_dir)
        await asyncio.to_thread(shutil.rmtree, doomed, True)
        await self.checkpoint_recovery_points()
        log.info("deleted partition %s (%s)", tp, path)
        return True

    async def delete_topic(self, topic: str) -> int:
        """Close and remove every partition of ``topic`` held here; return how many."""
        check_name(topic, "topic")
        partitions = sorted(tp.partition for tp in self._logs if tp.topic == topic)
        for partition in partitions:
            await self.delete(topic, partition)
        return len(partitions)

    async def enforce_retention(self, now_ms: int | None = None) -> int:
        """Run retention and producer expiry over every log once; return how many segments were deleted."""
        deleted = 0
        for plog in list(self._logs.values()):
            plog.expire_producers(now_ms)
            try:
                deleted += await plog.enforce_retention(now_ms)
            except OSError as exc:
                log.error("retention of %s failed: %s", plog, exc)
        return deleted

    async def checkpoint_recovery_points(self) -> None:
        """Write every log's recovery point to ``recovery-point-offset-checkpoint`` and every
        replica's high watermark to ``replication-offset-checkpoint``, each if one moved."""
        points = {tp: plog.recovery_point for tp, plog in self._logs.items()}
        if points != self._checkpointed:
            await asyncio.to_thread(write_recovery_points, self.data_dir, points)
            self._checkpointed = points
        marks = {
            tp: plog.high_watermark if plog.replicated else self._hw_at_start[tp]
            for tp, plog in self._logs.items()
            if plog.replicated or tp in self._hw_at_start
        }
        if marks != self._hw_checkpointed:
            await asyncio.to_thread(write_high_watermarks, self.data_dir, marks)
            self._hw_checkpointed = marks

    def checkpointed_high_watermark(self, tp: TopicPartition) -> int | None:
        """The high watermark ``replication-offset-checkpoint`` held for ``tp`` at start-up."""
        return self._hw_at_start.get(tp)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_interval_ms / 1000)
            try:
                await self.checkpoint_recovery_points()
            except OSError as exc:
                log.error("could not write the recovery points in %s: %s", self.data_dir, exc)

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retention_check_ms / 1000)
            try:
                await self.enforce_retention()
            except Exception:
                log.exception("retention check failed")


def _load_all(logs: list[PartitionLog]) -> None:
    for plog in logs:
        plog.load()


def _raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one: each active segment keeps one fd."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.debug("raised the open-files limit from %d to %d", soft, target)
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d: %s", soft, exc)
