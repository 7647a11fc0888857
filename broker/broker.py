"""The state of one broker: its id, the installed topology and the logs it owns.

Safe to use from the broker's one event loop only. The topology is replaced whole
(never edited in place), so a handler that read ``broker.topology`` keeps a consistent
view for the rest of its request.

Ownership changes are two-phase, so no write is acknowledged by a broker that no
longer owns its partition: ``install()`` first freezes the partitions the new epoch
moves away (new appends and commits get 421 NOT_OWNER naming the new owner), waits
for the writes already admitted to them to finish, checks them for data again, and
only then switches. A ``topology.json`` found at start-up that is newer than
cluster.yaml is held back the same way until every other broker of that epoch has it
too (or it is installed again): until then the broker serves only what both epochs
give it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from shoal.broker.coordinator import GroupCoordinator
from shoal.broker.replication.group_offsets import GroupOffsets
from shoal.broker.replication.leadership import Leadership
from shoal.broker.replication.membership import Membership
from shoal.router.internal_topics import OFFSETS_TOPIC, offsets_topic_config
from shoal.broker.replication.replicas import ReplicaManager
from shoal.client.membership import partition_map
from shoal.broker.storage import LogConfig, LogManager, PartitionLog
from shoal.broker.storage.durable import fsync_dir
from shoal.client.errors import (
    BrokerUnavailable,
    InvalidRequest,
    LeaderNotAvailable,
    NotOwner,
    ShoalError,
    StaleEpoch,
    Throttled,
    TopologyConflict,
)
from shoal.client.names import check_name
from shoal.client.structs import OffsetAndMetadata, TopicPartition
from shoal.router.hashing import group_coordinator
from shoal.router.server.auth import broker_token
from shoal.router.server.tls import client_context
from shoal.router.topology import BrokerSpec, TopicConfig, Topology, TopologyError

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0  # how long install() waits for admitted writes to a moving partition
AHEAD_RECHECK_S = 2.0  # how often a held-back topology.json is checked against the peers


def log_config(topic: TopicConfig, max_queue_bytes: int, producer_expiry_ms: int) -> LogConfig:
    """The storage settings of a topic. The writer lingers for company only when each
    write is fsynced (``flush: always``), where sharing one fsync is worth a millisecond;
    otherwise appends that queue while a write is under way are grouped anyway."""
    return LogConfig(
        linger_ms=1 if topic.flush == "always" else 0,
        segment_bytes=topic.segment_bytes,
        flush=topic.flush,
        flush_interval_ms=topic.flush_interval_ms,
        retention_ms=topic.retention_ms,
        retention_bytes=topic.retention_bytes,
        max_queue_bytes=max_queue_bytes,
        producer_expiry_ms=producer_expiry_ms,
    )


class Broker:
    """One broker: answers for the partitions the topology gives it, and no others."""

    def __init__(self, topology: Topology, broker_id: int, data_dir: Path):
        topology.broker(broker_id)  # KeyError when this broker is not in the topology
        self.topology = topology
        # A topology stored by an earlier PUT, newer than cluster.yaml: not in force until
        # the other brokers have it too (see _adopt_ahead) or it is installed again.
        self.ahead: Topology | None = None
        installed = _load_installed(data_dir)
        if installed is not None and installed.epoch > topology.epoch:
            log.warning(
                "%s holds epoch %d, newer than epoch %d of %s: serving only what both give this broker "
                "until the other brokers report epoch %d (or it is applied again)",
                data_dir / INSTALLED, installed.epoch, topology.epoch, topology.source, installed.epoch,
            )
            # auth, tls and metadata stay local
            self.ahead = dataclasses.replace(installed, auth=topology.auth, tls=topology.tls, metadata=topology.metadata)
        self.broker_id = broker_id
        self.data_dir = data_dir
        self.logs = LogManager(data_dir, self._config_for)
        self.coordinator = GroupCoordinator(
            self._partition_counts, settings=lambda: self.topology.settings, state_dir=data_dir
        )
        self._peers: aiohttp.ClientSession | None = None
        self._peer_token = broker_token(topology.auth, topology.replicated, topology.source)  # for /v1/replica/*
        self.membership = Membership(topology, broker_id) if topology.replicated else None
        self.leadership = Leadership(self.membership) if self.membership is not None else None
        self.replicas: ReplicaManager | None = None  # started with the broker when replicated
        # replicated: groups are coordinated by the leaders of __consumer_offsets
        self.groups = GroupOffsets(self) if self.membership is not None else None
        self._installing: Topology | None = None  # the epoch being installed, while its moves are frozen
        self._install_lock = asyncio.Lock()
        self._writes: Counter[TopicPartition] = Counter()  # admitted appends and commits not yet answered
        self._writes_done = asyncio.Event()
        self._ahead_task: asyncio.Task | None = None

    def _config_for(self, topic: str) -> LogConfig:
        if topic == OFFSETS_TOPIC and self.topology.replicated:
            config = offsets_topic_config(self.topology)
        else:
            config = self.topology.topics.get(topic, self.topology.defaults)
        settings = self.topology.settings
        return log_config(config, settings.max_queue_bytes, settings.producer_expiry_ms)

    def _partition_counts(self, topics: Iterable[str]) -> dict[str, int]:
        known = self.topology.topics
        return {t: known[t].partitions for t in topics if t in known}

    async def start(self) -> None:
        await self.logs.start()
        await self.coordinator.start()
        tls = self.topology.tls
        self._peers = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10, sock_connect=3),
            connector=aiohttp.TCPConnector(ssl=client_context(tls.ca_file if tls else None) or True),
            headers={"Authorization": f"Bearer {self._peer_token}"} if self._peer_token else None,
        )
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
        if self.membership is not None:
            await self.membership.start()
            self.leadership.start()
            self.replicas = ReplicaManager(self.leadership, self.logs, self._peers)
            self.replicas.reassigner.writes_in_flight = self._writes.__getitem__  # a hand-off waits for them
            self.replicas.start()
            self.groups.start()
        if self.ahead is not None:
            await self._adopt_ahead()
            if self.ahead is not None:
                self._ahead_task = asyncio.get_running_loop().create_task(self._recheck_ahead(), name="shoal-ahead")

    async def stop(self) -> None:
        if self._ahead_task is not None:
            self._ahead_task.cancel()
            await asyncio.gather(self._ahead_task, return_exceptions=True)
        if self.membership is not None:
            await self.groups.stop()
            if self.replicas is not None:
                await self.replicas.stop()
            await self.leadership.stop()
            await self.membership.stop()
        await self.coordinator.stop()
        if self._peers is not None:
            await self._peers.close()
        await self.logs.stop()

    def check_owner(self, topic: str, partition: int, leader_epoch: int | None = None) -> None:
        """Raise unless this broker owns ``topic/partition`` in the installed topology,
        in the one being installed, and in a stored one held back (UNKNOWN_TOPIC,
        UNKNOWN_PARTITION or NOT_OWNER naming the owner under the first that refuses).

        In a replicated cluster the owner is the partition's leader in etcd
        (``Leadership.check``: NOT_OWNER naming it, LEADER_NOT_AVAILABLE, or
        FENCED_LEADER_EPOCH when ``leader_epoch`` is given and is not the current one)."""
        check_name(topic, "topic")
        for topology in (self.topology, self._installing, self.ahead):
            if topology is None or (topic == OFFSETS_TOPIC and self.leadership is not None):
                continue
            owner = topology.owner(topic, partition)
            if self.leadership is not None:
                continue  # the topic and partition exist; who leads is etcd's
            if owner.id != self.broker_id:
                raise NotOwner(
                    f"broker {self.broker_id} does not own {topic}/{partition} at epoch {topology.epoch}; "
                    f"broker {owner.id} does",
                    owner_id=owner.id, owner_url=owner.url, epoch=topology.epoch,
                )
        if self.leadership is not None:
            tp = TopicPartition(topic, partition)
            state = self.leadership.check(tp, leader_epoch)
            lead = self.replicas.leading.get(tp) if self.replicas is not None else None
            if lead is None or lead.leader_epoch != state.leader_epoch:
                raise LeaderNotAvailable(
                    f"broker {self.broker_id} is taking over {topic}/{partition} at leader epoch {state.leader_epoch}",
                    topic=topic, partition=partition, retry_after=1,
                )

    @asynccontextmanager
    async def writing(self, topic: str, partition: int) -> AsyncIterator[PartitionLog]:
        """The log of an owned partition, for an append or a commit that ``install()``
        waits for before it moves the partition away."""
        plog = await self.partition_log(topic, partition)
        tp = TopicPartition(topic, partition)
        self.check_owner(topic, partition)  # again: an install may have begun while the log opened
        if self.replicas is not None:
            self.replicas.reassigner.check_writable(tp)  # no appends while leadership is handed off
        self._writes[tp] += 1
        try:
            yield plog
        finally:
            self._writes[tp] -= 1
            if not self._writes[tp]:
                del self._writes[tp]
                self._writes_done.set()

    def coordinator_of(self, group: str) -> BrokerSpec:
        """The broker that coordinates ``group``: the hashed one, or in a replicated cluster
        the leader of the group's ``__consumer_offsets`` partition (its preferred leader
        while it has none)."""
        check_name(group, "group")
        if self.groups is not None:
            leader = self.groups.coordinator_id(group)
            return self.topology.broker(leader if leader >= 0 else self.groups.preferred(group))
        return self.topology.broker(group_coordinator(group, self.topology.broker_ids))

    def check_coordinator(self, group: str) -> None:
        """Raise NOT_OWNER (naming the coordinator) unless this broker coordinates ``group``
        (and in a replicated cluster LEADER_NOT_AVAILABLE while it has none or is loading)."""
        self.group_coordinator(group)

    def group_coordinator(self, group: str) -> GroupCoordinator:
        """This broker's coordinator of ``group``, or raise as ``check_coordinator``."""
        if self.groups is not None:
            check_name(group, "group")
            return self.groups.coordinator(group)
        coordinator = self.coordinator_of(group)
        if coordinator.id != self.broker_id:
            raise NotOwner(
                f"broker {self.broker_id} does not coordinate group {group}; broker {coordinator.id} does",
                owner_id=coordinator.id, owner_url=coordinator.url, epoch=self.topology.epoch,
            )
        return self.coordinator

    async def commit_offsets(
        self, group: str, member_id: str | None, generation: int | None, entries: list[tuple[str, int, int, str]],
        *, authorization: str | None = None,
    ) -> None:
        """Store a group's committed offsets once its coordinator accepts the member: here
        (static: the partition owner's store; replicated: appended to __consumer_offsets),
        or forwarded to the coordinator (``POST /v1/groups/{group}/offsets``)."""
        if self.groups is None:
            await self.fence(group, member_id, generation, [TopicPartition(t, p) for t, p, _, _ in entries],
                             authorization=authorization)
            await self.logs.offsets.commit(group, entries)
        else:
            await self.groups.commit_at_coordinator(group, member_id, generation, entries, authorization)

    async def committed(self, group: str, topic: str, partition: int, *, authorization: str | None = None) -> OffsetAndMetadata | None:
        """A group's committed offset of a partition (asked of the coordinator when replicated)."""
        if self.groups is None:
            return self.logs.offsets.get(group, topic, partition)
        return (await self.groups.offsets_at_coordinator(group, authorization)).get(TopicPartition(topic, partition))

    async def delete_group_offsets(self, group: str) -> None:
        """Forget a group's committed offsets held here (replicated: only its coordinator
        holds them, and appends the deletion)."""
        if self.groups is None:
            await self.logs.offsets.delete(group)
        elif self.groups.coordinator_id(group) == self.broker_id:
            await self.groups.delete(group)

    def local_group_offsets(self) -> dict[str, dict[TopicPartition, OffsetAndMetadata]]:
        """Every group's committed offsets this broker holds (static: of the partitions it
        owns; replicated: of the groups it coordinates)."""
        if self.groups is not None:
            return self.groups.local_groups()
        store = self.logs.offsets
        return {g: store.group_offsets(g) for g in store.groups()}

    async def fence(
        self, group: str, member_id: str | None, generation: int | None, tps: list[TopicPartition],
        *, authorization: str | None = None,
    ) -> None:
        """Ask the group's coordinator (maybe this broker) whether a commit may be stored
        (static clusters; a replicated coordinator fences its own commits).

        The committing client's ``Authorization`` goes along: the coordinator asks the
        same principal's permission. A commit without a member id is let through when
        the coordinator cannot be reached, so tools and manually assigned consumers do
        not depend on it.
        """
        coordinator = self.coordinator_of(group)
        if coordinator.id == self.broker_id:
            self.coordinator.fence(group, member_id, generation, tps)
            return
        body = {
            "member_id": member_id,
            "generation": generation,
            "partitions": partition_map(tps),
        }
        try:
            headers = {"Authorization": authorization} if authorization else None
            async with self._peers.post(f"{coordinator.url}/v1/groups/{group}/fence", json=body, headers=headers) as resp:
                if resp.status == 200:
                    return
                problem = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            if member_id is None:
                log.warning("group %s: coordinator %d unreachable (%s); storing a member-less commit", group, coordinator.id, exc)
                return
            raise BrokerUnavailable(
                f"coordinator {coordinator.id} of group {group} did not answer: {exc}", broker_id=coordinator.id
            ) from None
        raise ShoalError.from_problem(problem, status=resp.status)

    def cluster_view(self) -> dict[str, Any]:
        """The ``GET /v1/cluster`` body: the topology, and in a replicated cluster each
        partition's leader, leader epoch, replicas and ISR as etcd holds them (and the
        leaders as ``owners``)."""
        topology = self.topology
        view = topology.to_dict()
        if self.membership is not None:
            view["partitions"] = parts = self.membership.view(topology)
            # clients route by owners: in a replicated cluster the owner is the leader
            view["owners"] = {
                name: [s["leader"] if s is not None and s["leader"] >= 0 else o for s, o in zip(parts[name], owners)]
                for name, owners in view["owners"].items()
            }
            if self.replicas is not None:
                view["reassignments"] = self.replicas.reassigner.progress()
        return view

    async def partition_log(self, topic: str, partition: int) -> PartitionLog:
        """The log of an owned partition, created on first use."""
        self.check_owner(topic, partition)
        return self.logs.get(topic, partition) or await self.logs.get_or_create(topic, partition)

    def _moves_away(self, new: Topology, tp: TopicPartition) -> bool:
        config = new.topics.get(tp.topic)
        if config is None or tp.partition >= config.partitions:
            return True
        # replicated: data moves by replication (router.metadata.store.reassign_all), not by install
        return self.leadership is None and new.owner(*tp).id != self.broker_id

    def conflicts(self, new: Topology) -> list[str]:
        """Partitions holding data (any offset ever written) that ``new`` would move
        elsewhere; the data of topics ``new`` drops goes with them."""
        moved = []
        for tp in self.logs.partitions():
            plog = self.logs.get(*tp)
            if plog is None or plog.high_watermark == 0 or tp.topic not in new.topics:
                continue
            if self._moves_away(new, tp):
                moved.append(f"{tp.topic}/{tp.partition}")
        return sorted(moved)

    async def install(self, new: Topology, delete_topics: Iterable[str] = ()) -> None:
        """Install a newer topology without a restart (PUT /v1/cluster).

        Topics of the installed topology that ``new`` leaves out must be named in
        ``delete_topics``: only then are they deleted with their data. Two-phase: the
        partitions ``new`` moves away are frozen (see ``check_owner``), the writes
        already admitted to them are waited for, and they are checked for data again
        before the switch.
        """
        async with self._install_lock:
            self._check_installable(new, set(delete_topics))
            self._installing = new
            try:
                await self._drain(new)
                moved = self.conflicts(new)
                if moved:
                    raise TopologyConflict(
                        f"epoch {new.epoch} would move partitions that hold data: {', '.join(moved[:20])}",
                        partitions=moved,
                    )
                await self._switch(new)
            finally:
                self._installing = None

    def _check_installable(self, new: Topology, delete_topics: set[str]) -> None:
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
        kept = sorted(delete_topics & set(new.topics))
        if kept:
            raise InvalidRequest(
                f"delete_topics names topics that epoch {new.epoch} keeps: {', '.join(kept[:20])}",
                field="delete_topics",
            )
        omitted = sorted(set(self.topology.topics) - set(new.topics) - delete_topics)
        if omitted:
            raise InvalidRequest(
                f"epoch {new.epoch} leaves out topics {', '.join(omitted[:20])}: name them in delete_topics "
                "to delete them and their data",
                field="delete_topics",
            )

    async def _drain(self, new: Topology) -> None:
        """Wait until no admitted write to a partition ``new`` moves away is unanswered."""
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                while any(self._moves_away(new, tp) for tp in self._writes):
                    self._writes_done.clear()
                    await self._writes_done.wait()
        except TimeoutError:
            raise Throttled(
                f"writes to partitions that epoch {new.epoch} moves away are still unanswered "
                f"after {DRAIN_TIMEOUT_S:.0f} s; try again",
                retry_after=1,
            ) from None

    async def _switch(self, new: Topology) -> None:
        local = self.topology  # auth, tls and metadata are never sent over the wire
        new = dataclasses.replace(new, auth=local.auth, tls=local.tls, metadata=local.metadata)
        dropped = sorted({tp.topic for tp in self.logs.partitions()} - set(new.topics) - {OFFSETS_TOPIC})
        await asyncio.to_thread(_save_installed, self.data_dir, new)
        if new.broker_ids != self.topology.broker_ids:
            self.coordinator.took_over()  # groups may have moved here from another broker
        self.topology = new
        if self.membership is not None:
            self.membership.update(new)
        if self.ahead is not None and self.ahead.epoch <= new.epoch:
            self.ahead = None
        await self.logs.reconfigure()
        for topic in dropped:  # the new topology is in force: a failed delete only leaves files
            try:
                await self.logs.delete_topic(topic)
            except OSError as exc:
                log.error("could not delete the data of dropped topic %s: %s", topic, exc)
        log.info("installed topology epoch %d (%d topics); deleted topics: %s", new.epoch, len(new.topics), dropped or "none")

    async def _adopt_ahead(self) -> None:
        """Put the held-back topology in force once every other broker of it reports its
        epoch (installed, or itself held back: each of them has then accepted it)."""
        ahead = self.ahead
        peers = [b for b in ahead.brokers if b.id != self.broker_id]

        async def epoch_of(url: str) -> int:
            try:
                async with self._peers.get(f"{url}/v1/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    body = await resp.json(content_type=None)
                return max(int(body.get("epoch") or 0), int(body.get("pending_epoch") or 0))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, TypeError, AttributeError):
                return -1

        epochs = await asyncio.gather(*(epoch_of(b.url) for b in peers))
        if self.ahead is not ahead or any(e < ahead.epoch for e in epochs):
            return
        async with self._install_lock:
            if self.ahead is ahead and ahead.epoch > self.topology.epoch:
                self.topology = ahead
                if self.membership is not None:
                    self.membership.update(ahead)
                await self.logs.reconfigure()
                log.info("every other broker has epoch %d: it is in force here too", ahead.epoch)
            self.ahead = None

    async def _recheck_ahead(self) -> None:
        while self.ahead is not None:
            await asyncio.sleep(AHEAD_RECHECK_S)
            try:
                await self._adopt_ahead()
            except Exception:
                log.exception("checking the held-back topology epoch against the other brokers failed")


INSTALLED = "topology.json"


def _save_installed(data_dir: Path, topology: Topology) -> None:
    """Keep an installed topology across restarts (write, fsync, rename)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / (INSTALLED + ".tmp")
    with open(tmp, "w") as f:
        json.dump(topology.to_dict(), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, data_dir / INSTALLED)
    fsync_dir(data_dir)  # the rename itself must survive a power cut


def _load_installed(data_dir: Path) -> Topology | None:
    path = data_dir / INSTALLED
    try:
        return Topology.from_dict(json.loads(path.read_text()), source=str(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TopologyError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return None
