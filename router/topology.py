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

Pure data and validation: no network IO (``load_topology`` reads one file).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

import yaml

from shoal.client.errors import UnknownPartition, UnknownTopic
from shoal.client.names import MAX_NAME_LENGTH, is_valid_name
from shoal.client.structs import TopicPartition
from shoal.router import hashing
from shoal.router.metadata.config import MetadataConfig, parse_metadata
from shoal.router.server.auth import ACTIONS, AuthConfig, Principal, pattern_problem, token_hash_problem
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
        return _Builder(source, {}, accept_owners=True).build(data)

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
    """Validate and build a topology from YAML text; ``source`` names it in errors.

    Raises:
        TopologyError: every problem found, with line numbers.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise TopologyError([f"{where}: invalid YAML: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise TopologyError([f"{source}: invalid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}
    duplicates: list[tuple[tuple, int, str]] = []
    if node is not None:
        _index_lines(node, (), lines, duplicates)
    builder = _Builder(source, lines, accept_owners=False)
    for path, line, key in duplicates:
        builder.problem(path, f"duplicate key {key!r}", line=line)
    return builder.build(data)


def _index_lines(node: yaml.Node, path: tuple, lines: dict[tuple, int], duplicates: list) -> None:
    """Record the line of every value by its path, and every duplicate mapping key."""
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = key_node.value
            if key in seen:
                duplicates.append((path, key_node.start_mark.line + 1, key))
            seen.add(key)
            _index_lines(value_node, path + (key,), lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, path + (i,), lines, duplicates)


# Field rules: each returns None when the value is fine, else what is wrong.
Rule = Callable[[Any], "str | None"]


def _show(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_rule(minimum: int, *, maximum: int | None = None, nullable: bool = False) -> Rule:
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    want = f"{'null or ' if nullable else ''}an integer {bounds}"

    def check(value: Any) -> str | None:
        if value is None and nullable:
            return None
        if _is_int(value) and value >= minimum and (maximum is None or value <= maximum):
            return None
        return f"must be {want}, got {_show(value)}"

    return check


def _flush_rule(value: Any) -> str | None:
    if value in FLUSH_POLICIES and isinstance(value, str):
        return None
    return f"must be one of {', '.join(FLUSH_POLICIES)}, got {_show(value)}"


def _bool_rule(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {_show(value)}"


_TOPIC_RULES: dict[str, Rule] = {
    "partitions": _int_rule(1),
    "flush": _flush_rule,
    "flush_interval_ms": _int_rule(1),
    "segment_bytes": _int_rule(1, maximum=2**31 - 1),  # index positions are 32-bit
    "retention_ms": _int_rule(1, nullable=True),
    "retention_bytes": _int_rule(1, nullable=True),
    "replication_factor": _int_rule(1),
    "min_insync_replicas": _int_rule(1),
    "unclean_leader_election": _bool_rule,
    "max_future_ms": _int_rule(0),
}
_SETTINGS_RULES: dict[str, Rule] = {f.name: _int_rule(1) for f in dataclasses.fields(Settings)}
assert set(_TOPIC_RULES) == {f.name for f in dataclasses.fields(TopicConfig)}

_TOP_KEYS = ("cluster", "epoch", "defaults", "brokers", "topics", "settings", "auth", "tls", "metadata")
_LOCAL_KEYS = ("auth", "tls", "metadata")
_BROKER_KEYS = ("id", "url", "data_dir", "kafka")
_PRINCIPAL_KEYS = ("token_hash", "admin", "replication") + ACTIONS
_TLS_KEYS = ("cert_file", "key_file", "ca_file")


def _url_problem(url: Any) -> str | None:
    want = "must be an http:// or https:// URL with a host and a port"
    if not isinstance(url, str):
        return f"{want}, got {_show(url)}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{want}, got {_show(url)} ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"{want}, got {_show(url)}"
    if not parts.hostname:
        return f"{want}, got {_show(url)} (no host)"
    if port is None or port == 0:
        return f"{want}, got {_show(url)} (no port)"
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
        return f"{want} and nothing else, got {_show(url)}"
    return None


def _kafka_address_problem(value: Any) -> str | None:
    want = "must be host:port, the advertised address of the broker's Kafka listener"
    if not isinstance(value, str):
        return f"{want}, got {_show(value)}"
    host, sep, port = value.rpartition(":")
    bare = host.strip("[]")
    if not sep or not bare or "/" in bare or bare.isspace() or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{want}, got {_show(value)}"
    return None


def _path_text(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Builder:
    """Checks parsed data field by field, collecting every problem before raising."""

    def __init__(self, source: str, lines: dict[tuple, int], *, accept_owners: bool):
        self.source = source
        self.lines = lines
        self.accept_owners = accept_owners
        self._problems: list[tuple[int, str]] = []
        self._overrides: dict[str, set[str]] = {}  # topic -> the config keys it sets itself

    def problem(self, path: tuple, message: str, *, line: int | None = None) -> None:
        if line is None:
            for i in range(len(path), -1, -1):
                line = self.lines.get(path[:i])
                if line is not None:
                    break
        where = f"{self.source}:{line}" if line else self.source
        self._problems.append((line or 0, f"{where}: {_path_text(path)}: {message}" if path else f"{where}: {message}"))

    def fail(self) -> TopologyError:
        """Every problem so far, in file order."""
        return TopologyError([text for _, text in sorted(self._problems, key=lambda item: item[0])])

    def mapping(self, value: Any, path: tuple, allowed: tuple[str, ...]) -> dict[str, Any]:
        """``value`` as a dict of its allowed keys (null is empty); report the rest."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(path, f"must be a mapping, got {_show(value)}")
            return {}
        out = {}
        for key, item in value.items():
            if key in allowed and isinstance(key, str):
                out[key] = item
            else:
                self.problem(path + (str(key),), f"unknown key (expected one of: {', '.join(allowed)})")
        return out

    def fields(self, value: Any, path: tuple, rules: dict[str, Rule]) -> dict[str, Any]:
        """The valid fields of a config mapping checked by ``rules``."""
        good = {}
        for key, item in self.mapping(value, path, tuple(rules)).items():
            message = rules[key](item)
            if message:
                self.problem(path + (key,), message)
            else:
                good[key] = item
        return good

    def build(self, data: Any) -> Topology:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.problem((), f"must be a mapping with {', '.join(_TOP_KEYS)}, got {_show(data)}")
            raise self.fail()
        # a replicated cluster's view: leaders, ISR, moves and, from the gateway, their health
        allowed = _TOP_KEYS + (
            ("owners", "partitions", "reassignments", "under_replicated", "offline") if self.accept_owners else ()
        )
        top = self.mapping(data, (), allowed)

        cluster = top.get("cluster", "local")
        if not is_valid_name(cluster):
            self.problem(("cluster",), f"must be a name of 1-{MAX_NAME_LENGTH} characters of A-Z a-z 0-9 . _ -, got {_show(cluster)}")
        epoch = top.get("epoch", 0)
        if not (_is_int(epoch) and epoch >= 0):
            self.problem(("epoch",), f"must be an integer >= 0, got {_show(epoch)}")

        defaults = TopicConfig(**self.fields(top.get("defaults"), ("defaults",), _TOPIC_RULES))
        settings = Settings(**self.fields(top.get("settings"), ("settings",), _SETTINGS_RULES))
        brokers = self.brokers(top.get("brokers"))
        topics = self.topics(top.get("topics"), defaults)
        if self.accept_owners:
            for name in _LOCAL_KEYS:
                if name in top:
                    self.problem((name,), "is read from each process's cluster.yaml at start-up, never installed over the API")
        auth = self.auth(top["auth"]) if "auth" in top else None
        tls = self.tls(top["tls"], brokers) if "tls" in top else None
        metadata = parse_metadata(top["metadata"], self) if "metadata" in top else None
        self.replication(defaults, topics, brokers, metadata)

        if self._problems:
            raise self.fail()
        return Topology(
            cluster=cluster,
            epoch=epoch,
            brokers=tuple(brokers),
            topics=topics,
            defaults=defaults,
            settings=settings,
            auth=auth,
            tls=tls,
            metadata=metadata,
            source=self.source,
        )

    def brokers(self, value: Any) -> list[BrokerSpec]:
        path = ("brokers",)
        if value is None or value == []:
            self.problem(path, "at least one broker is needed")
            return []
        if not isinstance(value, list):
            self.problem(path, f"must be a list of brokers, got {_show(value)}")
            return []
        out: list[BrokerSpec] = []
        ids: dict[int, int] = {}
        urls: dict[str, int] = {}
        for i, item in enumerate(value):
            here = path + (i,)
            if not isinstance(item, Mapping):
                self.problem(here, f"must be a mapping with id and url, got {_show(item)}")
                continue
            entry = self.mapping(item, here, _BROKER_KEYS)
            ok = True
            broker_id = entry.get("id")
            if broker_id is None:
                self.problem(here, "missing id")
                ok = False
            elif not (_is_int(broker_id) and broker_id >= 0):
                self.problem(here + ("id",), f"must be an integer >= 0, got {_show(broker_id)}")
                ok = False
            elif broker_id in ids:
                self.problem(here + ("id",), f"duplicate broker id {broker_id} (also brokers[{ids[broker_id]}])")
                ok = False
            else:
                ids[broker_id] = i
            url = entry.get("url")
            if url is None:
                self.problem(here, "missing url")
                ok = False
            elif message := _url_problem(url):
                self.problem(here + ("url",), message)
                ok = False
            else:
                url = url.rstrip("/")
                if url.lower() in urls:
                    self.problem(here + ("url",), f"duplicate url {url} (also brokers[{urls[url.lower()]}])")
                    ok = False
                else:
                    urls[url.lower()] = i
            data_dir = entry.get("data_dir")
            if data_dir is not None and not (isinstance(data_dir, str) and data_dir.strip() and "\0" not in data_dir):
                self.problem(here + ("data_dir",), f"must be a non-empty path, got {_show(data_dir)}")
                ok = False
            kafka = entry.get("kafka")
            if kafka is not None and (message := _kafka_address_problem(kafka)):
                self.problem(here + ("kafka",), message)
                ok = False
            if ok:
                out.append(BrokerSpec(broker_id, url, data_dir or default_data_dir(broker_id), kafka))
        return out

    def topics(self, value: Any, defaults: TopicConfig) -> dict[str, TopicConfig]:
        path = ("topics",)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(path, f"must be a mapping of topic name to config, got {_show(value)}")
            return {}
        out = {}
        for name, config in value.items():
            here = path + (str(name),)
            if not is_valid_name(name):
                self.problem(
                    here,
                    f"invalid topic name {_show(name)}: use 1-{MAX_NAME_LENGTH} characters of "
                    "A-Z a-z 0-9 . _ - (not '.' or '..'), quoted if YAML would read it as a number",
                )
                continue
            if name.startswith(INTERNAL_PREFIX):
                self.problem(
                    here,
                    f"invalid topic name {_show(name)}: names starting with {INTERNAL_PREFIX!r} are reserved "
                    "for internal topics (__consumer_offsets)",
                )
                continue
            own = self.fields(config, here, _TOPIC_RULES)
            self._overrides[name] = set(own)
            out[name] = dataclasses.replace(defaults, **own)
        return out

    def replication(
        self, defaults: TopicConfig, topics: dict[str, TopicConfig], brokers: list[BrokerSpec], metadata: MetadataConfig | None
    ) -> None:
        """Replica counts the cluster can hold; each reported where it was set (a topic
        that inherits a bad default is not reported again)."""
        keys = {"replication_factor", "min_insync_replicas"}
        self.replica_counts(("defaults",), defaults, len(brokers), metadata)
        for name, config in topics.items():
            if self._overrides.get(name, set()) & keys:
                self.replica_counts(("topics", name), config, len(brokers), metadata)

    def replica_counts(self, path: tuple, config: TopicConfig, n_brokers: int, metadata: MetadataConfig | None) -> None:
        factor = config.replication_factor
        # A document from the API carries no metadata section: the receiving process has its own.
        if factor > 1 and metadata is None and not self.accept_owners:
            self.problem(
                path + ("replication_factor",),
                f"is {factor}, but a cluster without a metadata: section (etcd) keeps one replica per partition",
            )
        elif n_brokers and factor > n_brokers:
            self.problem(path + ("replication_factor",), f"is {factor}, more than the {n_brokers} brokers")
        if config.min_insync_replicas > factor:
            self.problem(
                path + ("min_insync_replicas",), f"is {config.min_insync_replicas}, more than replication_factor {factor}"
            )

    def auth(self, value: Any) -> AuthConfig | None:
        path = ("auth",)
        section = self.mapping(value, path, ("principals", "kafka_sasl_plaintext"))
        plaintext = section.get("kafka_sasl_plaintext", False)
        if not isinstance(plaintext, bool):
            self.problem(path + ("kafka_sasl_plaintext",), f"must be true or false, got {_show(plaintext)}")
        entries = section.get("principals")
        if not isinstance(entries, Mapping) or not entries:
            self.problem(path + ("principals",), "must map at least one principal name to its token_hash and permissions")
            return None
        principals = []
        hashes: dict[str, str] = {}
        for name, entry in entries.items():
            here = path + ("principals", str(name))
            if not is_valid_name(name):
                self.problem(here, f"invalid principal name {_show(name)}: use 1-{MAX_NAME_LENGTH} characters of A-Z a-z 0-9 . _ -")
                continue
            if not isinstance(entry, Mapping):
                self.problem(here, f"must be a mapping with token_hash and permissions, got {_show(entry)}")
                continue
            before = len(self._problems)
            fields = self.mapping(entry, here, _PRINCIPAL_KEYS)
            token_hash = fields.get("token_hash")
            if token_hash is None:
                self.problem(here, "missing token_hash")
            elif message := token_hash_problem(token_hash):
                self.problem(here + ("token_hash",), message)
            elif token_hash in hashes:
                self.problem(here + ("token_hash",), f"the same token as principal {hashes[token_hash]}")
            else:
                hashes[token_hash] = name
            flags = {flag: fields.get(flag, False) for flag in ("admin", "replication")}
            for flag, value in flags.items():
                if not isinstance(value, bool):
                    self.problem(here + (flag,), f"must be true or false, got {_show(value)}")
            patterns = {action: self.patterns(fields.get(action), here + (action,)) for action in ACTIONS}
            if len(self._problems) == before:
                principals.append(Principal(name, token_hash, **flags, **patterns))
        return AuthConfig(tuple(principals), kafka_sasl_plaintext=plaintext is True)

    def patterns(self, value: Any, path: tuple) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.problem(path, f"must be a list of name patterns, got {_show(value)}")
            return ()
        for i, item in enumerate(value):
            if message := pattern_problem(item):
                self.problem(path + (i,), message)
        return tuple(value)

    def tls(self, value: Any, brokers: list[BrokerSpec]) -> TlsConfig | None:
        path = ("tls",)
        if not isinstance(value, Mapping):
            self.problem(path, f"must be a mapping with cert_file and key_file, got {_show(value)}")
            return None
        fields = self.mapping(value, path, _TLS_KEYS)
        for key in _TLS_KEYS:
            item = fields.get(key)
            if item is None and key != "ca_file":
                self.problem(path, f"missing {key}")
            elif item is not None and not (isinstance(item, str) and item.strip() and "\0" not in item):
                self.problem(path + (key,), f"must be a file path, got {_show(item)}")
        for broker in brokers:
            if not broker.url.startswith("https://"):
                self.problem(path, f"is set, so broker {broker.id} must have an https:// url, not {broker.url}")
        return TlsConfig(fields.get("cert_file", ""), fields.get("key_file", ""), fields.get("ca_file"))
