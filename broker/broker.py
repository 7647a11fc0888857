"""The state of one broker: its id, the installed topology and the logs it owns.

Safe to use from the broker's one event loop only. The topology is replaced whole
(never edited in place), so a handler that read ``broker.topology`` keeps a consistent
view for the rest of its request.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shoal.broker.storage.log_manager import LogManager
from shoal.broker.storage.partition_log import LogConfig, PartitionLog
from shoal.client.errors import (
    InvalidRequest,
    NotOwner,
    StaleEpoch,
    TopologyConflict,
)
from shoal.client.names import check_name
from shoal.router.topology import TopicConfig, Topology

log = logging.getLogger(__name__)


def log_config(topic: TopicConfig) -> LogConfig:
    return LogConfig(
        segment_bytes=topic.segment_bytes,
        flush=topic.flush,
        flush_interval_ms=topic.flush_interval_ms,
        retention_ms=topic.retention_ms,
        retention_bytes=topic.retention_bytes,
    )


class Broker:
    """One broker: answers for the partitions the topology gives it, and no others."""

    def __init__(self, topology: Topology, broker_id: int, data_dir: Path):
        topology.broker(broker_id)  # KeyError when this broker is not in the topology
        self.topology = topology
        self.broker_id = broker_id
        self.data_dir = data_dir
        self.logs = LogManager(data_dir, self._config_for)

    def _config_for(self, topic: str) -> LogConfig:
        config = self.topology.topics.get(topic, self.topology.defaults)
        return log_config(config)

    async def start(self) -> None:
        await self.logs.start()
        owned = sum(
            1
            for name, cfg in self.topology.topics.items()
            for p in range(cfg.partitions)
            if self.topology.owner(name, p).id == self.broker_id
        )
        log.info(
            "broker %d serving %d partitions of cluster %s at epoch %d, data in %s",
            self.broker_id, owned, self.topology.cluster, self.topology.epoch, self.data_dir,
        )

    async def stop(self) -> None:
        await self.logs.stop()

    def check_owner(self, topic: str, partition: int) -> None:
        """Raise unless this broker owns ``topic/partition`` in the installed topology."""
        check_name(topic, "topic")
        topology = self.topology
        owner = topology.owner(topic, partition)
        if owner.id != self.broker_id:
            raise NotOwner(
                f"broker {self.broker_id} does not own {topic}/{partition}; broker {owner.id} does",
                owner_id=owner.id, owner_url=owner.url, epoch=topology.epoch,
            )

    async def partition_log(self, topic: str, partition: int) -> PartitionLog:
        """The log of an owned partition, created on first use."""
        self.check_owner(topic, partition)
        return self.logs.get(topic, partition) or await self.logs.get_or_create(topic, partition)

    def conflicts(self, new: Topology) -> list[str]:
        """Owned partitions holding data that ``new`` would move elsewhere or drop."""
        moved = []
        for tp in self.logs.partitions():
            plog = self.logs.get(*tp)
            if plog is None or plog.high_watermark == 0:
                continue
            config = new.topics.get(tp.topic)
            if config is None:
                continue  # a deleted topic: its data goes with it
            if tp.partition >= config.partitions or new.owner(tp.topic, tp.partition).id != self.broker_id:
                moved.append(f"{tp.topic}/{tp.partition}")
        return sorted(moved)

    async def install(self, new: Topology) -> None:
        """Install a newer topology without a restart (PUT /v1/cluster)."""
        if new.epoch <= self.topology.epoch:
            raise StaleEpoch(
                f"epoch {new.epoch} is not newer than the installed epoch {self.topology.epoch}",
                epoch=self.topology.epoch,
            )
        try:
            new.broker(self.broker_id)
        except KeyError:
            raise InvalidRequest(
                f"the new topology has no broker {self.broker_id}; remove a broker only after stopping it",
                field="brokers",
            ) from None
        if new.cluster != self.topology.cluster:
            raise InvalidRequest(
                f"cluster name {new.cluster!r} differs from {self.topology.cluster!r}", field="cluster"
            )
        moved = self.conflicts(new)
        if moved:
            raise TopologyConflict(
                f"epoch {new.epoch} would move partitions that hold data: {', '.join(moved[:20])}",
                partitions=moved,
            )
        dropped = sorted({tp.topic for tp in self.logs.partitions()} - set(new.topics))
        self.topology = new
        await self.logs.reconfigure()
        for topic in dropped:
            await self.logs.delete_topic(topic)
        log.info("installed topology epoch %d (%d topics); deleted topics: %s", new.epoch, len(new.topics), dropped or "none")
