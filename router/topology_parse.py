"""Parsing and validating ``cluster.yaml`` into a ``Topology`` (``router.topology``).

Every field has a rule; every problem is collected (with the file, the line when the
text came from YAML, and the field path) before anything is built, so an invalid file
is reported whole and never half-applied. ``Topology.from_dict`` uses the same
``Builder`` for a topology that arrives as JSON (``PUT /v1/cluster``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import yaml

from shoal.client.names import MAX_NAME_LENGTH, is_valid_name
from shoal.router.metadata.config import MetadataConfig, parse_metadata
from shoal.router.server.auth import ACTIONS, AuthConfig, Principal, pattern_problem, token_hash_problem
from shoal.router.server.tls import TlsConfig
from shoal.router.topology import (
    FLUSH_POLICIES,
    INTERNAL_PREFIX,
    BrokerSpec,
    Settings,
    TopicConfig,
    Topology,
    TopologyError,
    default_data_dir,
)


def parse(text: str, source: str = "<string>") -> Topology:
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
    builder = Builder(source, lines, accept_owners=False)
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


class Builder:
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
