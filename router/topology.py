"""The cluster topology: brokers, topics and their config, loaded from ``cluster.yaml``.

The YAML file is the source of truth; see ``cluster.yaml`` at the repository root::

    cluster: local            # a name
    epoch: 1                  # bumped on every change (missing: 0)
    defaults: {partitions: 3, flush: interval, ...}   # topic defaults, see TopicConfig
    brokers:
      - {id: 1, url: "http://127.0.0.1:9091", data_dir: data/broker-1, kafka: "127.0.0.1:9191"}
    topics:
      orders: {partitions: 6}
      audit: {partitions: 1, flush: always, retention_ms: null}
    settings: {max_request_bytes: 8388608, ...}       # broker limits, see Settings
    auth: {principals: {ops: {token_hash: "sha256:...", admin: true}}}  # optional, see router.auth
    tls: {cert_file: server.pem, key_file: server.key}                 # optional, see router.tls
    metadata: {etcd: [http://127.0.0.1:2379]}   # optional: replicated, see router.metadata.config

Loading validates everything before anything is built and reports every problem at
once in a ``TopologyError``, one line each naming the file, the line (when the text
came from YAML) and the field path. An invalid file is never half-applied.

Partition owners are not configured: they are the rendezvous hash of
``(topic, partition)`` over the broker ids (``router.hashing``). A topic's replicas are
the first ``replication_factor`` brokers of that ranking; the first is the preferred
leader and, with one replica, the owner. A factor above 1 needs ``metadata:`` (etcd).

``auth``, ``tls`` and ``metadata`` are each process's own: they are read from the file at start-up,
never served by ``GET /v1/cluster`` nor accepted by ``PUT /v1/cluster``.

Pure data: no network IO (``load_topology`` reads one file). The rules that parse and
validate the YAML are in ``router.topology_parse``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import yaml

from shoal.client.errors import UnknownPartition, UnknownTopic
from shoal.client.structs import TopicPartition
from shoal.router import hashing
from shoal.router.metadata.config import MetadataConfig
from shoal.router.server.auth import AuthConfig
from shoal.router.server.tls import TlsConfig

INTERNAL_PREFIX = "__"  # as in Kafka: names of internal topics, never declared

__all__ = [
    "FLUSH_POLICIES",
    "TopicConfig",
    "BrokerSpec",
    "Settings",
    "Topology",
    "TopologyError",
    "load_topology",
    "parse_topology",
]

log = logging.getLogger(__name__)

FLUSH_POLICIES = ("always", "interval", "never")
_MIB = 1024 * 1024


class TopologyError(ValueError):
    """A topology that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class TopicConfig:
    """Per-topic settings; ``defaults`` in cluster.yaml sets them for every topic.

    Attributes:
        partitions: number of partitions (>= 1).
        flush: when an append is fsynced before it is acknowledged: ``always`` (every
            batch), ``interval`` (at most ``flush_interval_ms`` later; a crash of the
            machine may lose that much) or ``never`` (left to the OS).
        flush_interval_ms: the fsync period under ``flush: interval``.
        segment_bytes: a segment file rolls once it reaches this size.
        retention_ms: whole segments older than this are deleted; None keeps them forever.
        retention_bytes: oldest segments are deleted while the partition is larger
            than this; None means no size limit.
        replication_factor: copies of each partition (brokers holding it); above 1
            only with ``metadata:``, and at most the number of brokers.
        min_insync_replicas: the in-sync replicas an ``acks=all`` append needs
            (at most ``replication_factor``).
        unclean_leader_election: let an out-of-sync replica become leader when no
            in-sync one is alive (availability over acknowledged records).
        max_future_ms: a batch whose newest record is stamped more than this ahead of
            the broker's clock is refused with 400 INVALID_TIMESTAMP (Kafka's
            ``message.timestamp.after.max.ms``; default one hour).
    """

    partitions: int = 1
    flush: str = "interval"
    flush_interval_ms: int = 200
    segment_bytes: int = 128 * _MIB
    retention_ms: int | None = 7 * 24 * 3600 * 1000
    retention_bytes: int | None = None
    replication_factor: int = 1
    min_insync_replicas: int = 1
    unclean_leader_election: bool = False
    max_future_ms: int = 3600 * 1000

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Settings:
    """Broker limits, the same for every broker of the cluster.

    Attributes:
        max_request_bytes: largest request body accepted (413 beyond).
        max_batch_bytes: largest single batch frame accepted (413 beyond).
        max_wait_ms: longest long-poll a fetch may ask for.
        max_fetch_bytes: most bytes one fetch answers with (at least one batch).
        max_connections: most requests served at once, long-polls not included; one
            more gets 429 THROTTLED (health checks and metrics are not counted).
        max_long_polls: most fetches with ``max_wait_ms > 0`` served at once (their own
            budget, so parked consumers never crowd out produce and commits).
        max_buffered_bytes: most request-body bytes held at once, counted as they
            arrive; a request announcing more than the room left, or whose bytes
            would go past it, gets 429 THROTTLED.
        body_timeout_ms: a request body must arrive whole within this long after its
            headers, else 408 REQUEST_TIMEOUT and the connection is closed.
        max_queue_bytes: most bytes of appends waiting for one partition's writer; one
            more gets 429 THROTTLED with Retry-After.
        producer_expiry_ms: an idempotent producer id that wrote nothing to a partition
            for this long is forgotten there (Kafka's ``producer.id.expiration.ms``).
        group_max_size: most members of one consumer group; one more gets 409
            GROUP_MAX_SIZE_REACHED (Kafka's group.max.size).
        group_empty_retention_ms: how long a coordinator remembers a group with no
            members (its generation and assignor); committed offsets are not affected.
    """

    max_request_bytes: int = 8 * _MIB
    max_batch_bytes: int = 4 * _MIB
    max_wait_ms: int = 30_000
    max_fetch_bytes: int = 8 * _MIB
    max_connections: int = 1024
    max_long_polls: int = 4096
    max_buffered_bytes: int = 256 * _MIB
    body_timeout_ms: int = 30_000
    max_queue_bytes: int = 64 * _MIB
    producer_expiry_ms: int = 24 * 3600 * 1000
    group_max_size: int = 1000
    group_empty_retention_ms: int = 600_000

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BrokerSpec:
    """One broker: its id, advertised URL and data directory.

    ``data_dir`` is relative to the broker's working directory unless absolute.
    ``kafka`` is the advertised ``host:port`` of its Kafka protocol listener (None: no listener).
    """

    id: int
    url: str
    data_dir: str
    kafka: str | None = None

    @property
    def kafka_address(self) -> tuple[str, int] | None:
        """``kafka`` split into (host, port), or None."""
        if self.kafka is None:
            return None
        host, _, port = self.kafka.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 0


def default_data_dir(broker_id: int) -> str:
    """Where a broker keeps its partitions when cluster.yaml does not say."""
    return f"data/broker-{broker_id}"


@dataclass(frozen=True)
class Topology:
    """A validated cluster topology. Immutable; safe to share across tasks.

    Build one with ``load_topology``, ``parse_topology`` or ``Topology.from_dict``
    (which validate); the constructor trusts its arguments.

    Example::

        topo = load_topology("cluster.yaml")
        topo.owner("orders", 3).url     # the broker serving orders/3
    """

    cluster: str
    epoch: int
    brokers: tuple[BrokerSpec, ...]
    topics: dict[str, TopicConfig]
    defaults: TopicConfig = TopicConfig()
    settings: Settings = Settings()
    auth: AuthConfig | None = None
    tls: TlsConfig | None = None
    metadata: MetadataConfig | None = None
    source: str = field(default="<memory>", compare=False)

    @property
    def broker_ids(self) -> list[int]:
        return [b.id for b in self.brokers]

    @cached_property
    def _by_id(self) -> dict[int, BrokerSpec]:
        return {b.id: b for b in self.brokers}

    @cached_property
    def _owners(self) -> dict[str, list[int]]:
        ids = self.broker_ids
        return {
            name: [hashing.owner(name, p, ids) for p in range(cfg.partitions)]
            for name, cfg in self.topics.items()
        }

    def topic(self, name: str) -> TopicConfig:
        """The config of topic ``name``.

        Raises:
            UnknownTopic: no such topic.
        """
        try:
            return self.topics[name]
        except KeyError:
            raise UnknownTopic(f"unknown topic {name!r}", topic=name) from None

    def broker(self, broker_id: int) -> BrokerSpec:
        """The broker with this id. Raises KeyError if there is none."""
        return self._by_id[broker_id]

    def owners(self, topic: str) -> list[int]:
        """The owning broker id of each partition of ``topic``, partition 0 first.

        Raises:
            UnknownTopic: no such topic.
        """
        self.topic(topic)
        return list(self._owners[topic])

    def owner(self, topic: str, partition: int) -> BrokerSpec:
        """The broker that owns ``topic``/``partition``.

        Raises:
            UnknownTopic: no such topic.
            UnknownPartition: ``partition`` is not in ``[0, partitions)``.
        """
        count = self.topic(topic).partitions
        if isinstance(partition, bool) or not isinstance(partition, int) or not 0 <= partition < count:
            raise UnknownPartition(
                f"topic {topic!r} has partitions 0-{count - 1}, not {partition!r}",
                topic=topic,
                partition=partition,
                partitions=count,
            )
        return self._by_id[self._owners[topic][partition]]

    @property
    def replicated(self) -> bool:
        """True when etcd holds leaders and ISRs (a ``metadata:`` section)."""
        return self.metadata is not None

    def replicas(self, topic: str, partition: int) -> list[int]:
        """The replica set of ``topic``/``partition``, preferred leader first.

        Raises:
            UnknownTopic: no such topic.
            UnknownPartition: ``partition`` is not in ``[0, partitions)``.
        """
        self.owner(topic, partition)
        return hashing.rank(topic, partition, self.broker_ids)[: self.topics[topic].replication_factor]

    def preferred_leader(self, topic: str, partition: int) -> int:
        """The broker id that leads ``topic``/``partition`` when all replicas are live."""
        return self.owner(topic, partition).id

    def owned(self, broker_id: int) -> list[TopicPartition]:
        """The partitions broker ``broker_id`` owns, sorted by topic then partition."""
        return [
            TopicPartition(name, p)
            for name in sorted(self._owners)
            for p, owner_id in enumerate(self._owners[name])
            if owner_id == broker_id
        ]

    def to_dict(self) -> dict[str, Any]:
        """The ``GET /v1/cluster`` body, plus ``defaults`` and ``settings``.

        Broker data dirs, ``auth`` and ``tls`` are left out: they are each process's own business.
        """
        names = sorted(self.topics)
        return {
            "cluster": self.cluster,
            "epoch": self.epoch,
            "brokers": [_broker_dict(b) for b in self.brokers],
            "topics": {name: self.topics[name].to_dict() for name in names},
            "owners": {name: list(self._owners[name]) for name in names},
            "defaults": self.defaults.to_dict(),
            "settings": self.settings.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "<request>") -> Topology:
        """Validate and build from ``to_dict()`` output or parsed YAML.

        ``owners``, ``partitions`` and ``reassignments`` (a replicated broker's view of etcd) are accepted
        and ignored: owners are always recomputed, partition states live in etcd.

        Raises:
            TopologyError: every problem found.
        """
        from shoal.router.topology_parse import Builder  # the rules build this module's classes

        return Builder(source, {}, accept_owners=True).build(data)

    def to_yaml(self) -> str:
        """cluster.yaml text for this topology: topics on one line each, showing only
        what differs from the defaults, and data dirs only where not the default."""
        dump = _dump_block
        brokers = []
        for b in self.brokers:
            entry = _broker_dict(b)
            if b.data_dir != default_data_dir(b.id):
                entry["data_dir"] = b.data_dir
            brokers.append(entry)
        out = [dump({"cluster": self.cluster, "epoch": self.epoch})]
        out.append(dump({"defaults": self.defaults.to_dict()}))
        out.append(dump({"brokers": brokers}))
        if self.topics:
            out.append("topics:\n")
            defaults = self.defaults.to_dict()
            for name in sorted(self.topics):
                overrides = {k: v for k, v in self.topics[name].to_dict().items() if v != defaults[k]}
                out.append(f"  {_dump_flow(name)}: {_dump_flow(overrides)}\n")
        else:
            out.append("topics: {}\n")
        out.append(dump({"settings": self.settings.to_dict()}))
        for name in ("auth", "tls", "metadata"):
            section = getattr(self, name)
            if section is not None:
                out.append(dump({name: section.to_dict()}))
        return "".join(out)


def _broker_dict(b: BrokerSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": b.id, "url": b.url}
    if b.kafka is not None:
        entry["kafka"] = b.kafka
    return entry


def _dump_block(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _dump_flow(data: Any) -> str:
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=True, width=1 << 20)
    return text.removesuffix("\n...\n").strip()


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Read and validate a cluster.yaml.

    Raises:
        TopologyError: the file cannot be read, is not YAML, or is not a valid topology.
    """
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise TopologyError([f"{source}: cannot read the topology: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise TopologyError([f"{source}: not UTF-8 text: {exc.reason} at byte {exc.start}"]) from exc
    topo = parse_topology(text, source)
    log.debug("loaded topology %s: cluster=%s epoch=%d", source, topo.cluster, topo.epoch)
    return topo


def parse_topology(text: str, source: str = "<string>") -> Topology:
    """Validate and build a topology from YAML text; ``source`` names it in errors
    (the rules are in ``router.topology_parse``).

    Raises:
        TopologyError: every problem found, with line numbers.
    """
    from shoal.router.topology_parse import parse

    return parse(text, source)
