"""The ``metadata:`` section of cluster.yaml: where the cluster's etcd is.

::

    metadata:
      etcd: [http://127.0.0.1:2379]   # client endpoints, tried in order
      start_local: true               # `shoal cluster up` runs one etcd (data/etcd)
      lease_ttl_ms: 3000              # a broker's liveness lease; whole seconds
      replica_lag_time_max_ms: 10000  # a follower this far behind leaves the ISR
      tls:                            # optional, for https:// endpoints
        ca_file: etcd-ca.pem          # CA that signed etcd's certificate (else the system's)
        cert_file: client.pem         # client certificate, if etcd asks for one
        key_file: client.key

With this section the cluster is replicated and etcd holds everything that needs
agreement (``router.metadata.store``); without it the cluster is static (one replica
per partition, no etcd). The section is each process's own, like ``auth`` and ``tls``:
read from its file at start-up, never served by nor installed over the HTTP API.

Pure data and validation, no IO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = ["EtcdTls", "MetadataConfig", "parse_metadata", "MIN_LEASE_TTL_MS"]

# etcd raises shorter leases to its minimum TTL (1.5 x its election timeout, 1 s by
# default, rounded up to whole seconds): asking for less would be silently ignored.
MIN_LEASE_TTL_MS = 2000
_KEYS = ("etcd", "start_local", "lease_ttl_ms", "replica_lag_time_max_ms", "tls")
_TLS_KEYS = ("ca_file", "cert_file", "key_file")


@dataclass(frozen=True)
class EtcdTls:
    """TLS towards etcd. Relative paths are from the process's working directory.

    Attributes:
        ca_file: PEM CA bundle that signed etcd's certificate; None: the system's.
        cert_file: PEM client certificate (etcd's ``--client-cert-auth``); None: none.
        key_file: its private key; set exactly when ``cert_file`` is.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("ca_file", self.ca_file), ("cert_file", self.cert_file), ("key_file", self.key_file)) if v}


@dataclass(frozen=True)
class MetadataConfig:
    """Where the cluster's etcd is and how brokers hold their liveness lease.

    Attributes:
        etcd: client URLs of the etcd members; a client fails over between them.
        start_local: ``shoal cluster up`` starts one etcd listening on ``etcd[0]``
            (peer port: the client port + 1) with its data in ``data/etcd``.
        lease_ttl_ms: a broker's lease TTL; a broker that cannot renew for this long
            is taken for dead and loses its leaderships (see docs/replication.md).
        tls: TLS options towards ``https://`` endpoints; None: plain or system trust.
        replica_lag_time_max_ms: a follower that has not caught up with the leader's log
            end for this long leaves the ISR.
    """

    etcd: tuple[str, ...]
    start_local: bool = False
    lease_ttl_ms: int = 3000
    tls: EtcdTls | None = None
    replica_lag_time_max_ms: int = 10000

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"etcd": list(self.etcd), "start_local": self.start_local, "lease_ttl_ms": self.lease_ttl_ms}
        if self.replica_lag_time_max_ms != 10000:
            out["replica_lag_time_max_ms"] = self.replica_lag_time_max_ms
        if self.tls is not None:
            out["tls"] = self.tls.to_dict()
        return out


class _Problems(Protocol):
    """What ``parse_metadata`` needs from the topology's validator."""

    def problem(self, path: tuple, message: str) -> None: ...

    def mapping(self, value: Any, path: tuple, allowed: tuple[str, ...]) -> dict[str, Any]: ...


def _endpoint_problem(url: Any) -> str | None:
    want = "must be an http:// or https:// URL with a host and a port"
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
        port = parts.port if parts else None
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port:
        return f"{want}, got {url!r}"
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
        return f"{want} and nothing else, got {url!r}"
    return None


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and "\0" not in value


def parse_metadata(value: Any, check: _Problems) -> MetadataConfig | None:
    """Validate a ``metadata:`` mapping, reporting each problem through ``check``.

    https:// endpoints without ``tls`` verify etcd with the system's CAs.
    """
    path = ("metadata",)
    if not isinstance(value, dict):
        check.problem(path, f"must be a mapping with etcd (a list of endpoint URLs), got {value!r}")
        return None
    fields = check.mapping(value, path, _KEYS)
    endpoints = fields.get("etcd")
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    if not isinstance(endpoints, list) or not endpoints:
        check.problem(path + ("etcd",), f"must be a list of at least one etcd endpoint URL, got {endpoints!r}")
        endpoints = []
    urls: list[str] = []
    for i, url in enumerate(endpoints):
        if message := _endpoint_problem(url):
            check.problem(path + ("etcd", i), message)
        else:
            urls.append(url.rstrip("/"))
    start_local = fields.get("start_local", False)
    if not isinstance(start_local, bool):
        check.problem(path + ("start_local",), f"must be true or false, got {start_local!r}")
    elif start_local and len(endpoints) != 1:
        check.problem(path + ("etcd",), f"start_local runs one etcd, so list exactly one endpoint, not {len(endpoints)}")
    elif start_local and urls and not urls[0].startswith("http://"):
        check.problem(path + ("etcd",), "start_local runs a plain-http etcd, so its endpoint must be http://")
    ttl = fields.get("lease_ttl_ms", 3000)
    if not (isinstance(ttl, int) and not isinstance(ttl, bool) and ttl >= MIN_LEASE_TTL_MS and ttl % 1000 == 0):
        check.problem(
            path + ("lease_ttl_ms",),
            f"must be a whole number of seconds in ms, >= {MIN_LEASE_TTL_MS} (etcd leases count seconds), got {ttl!r}",
        )
    lag = fields.get("replica_lag_time_max_ms", 10000)
    if not (isinstance(lag, int) and not isinstance(lag, bool) and lag >= 100):
        check.problem(path + ("replica_lag_time_max_ms",), f"must be a whole number of ms >= 100, got {lag!r}")
    tls = _parse_tls(fields["tls"], check) if "tls" in fields else None
    if tls is not None and urls and not all(u.startswith("https://") for u in urls):
        check.problem(path + ("tls",), "is set, so every etcd endpoint must be https://")
    # Returned even when a field was wrong: the caller builds nothing once any problem was reported.
    return MetadataConfig(tuple(urls), start_local, ttl, tls, lag)


def _parse_tls(value: Any, check: _Problems) -> EtcdTls | None:
    path = ("metadata", "tls")
    if not isinstance(value, dict):
        check.problem(path, f"must be a mapping with ca_file, cert_file and key_file (each optional), got {value!r}")
        return None
    fields = check.mapping(value, path, _TLS_KEYS)
    for key, item in fields.items():
        if item is not None and not _is_path(item):
            check.problem(path + (key,), f"must be a file path, got {item!r}")
    if bool(fields.get("cert_file")) != bool(fields.get("key_file")):
        check.problem(path, "cert_file and key_file go together: set both or neither")
    return EtcdTls(fields.get("ca_file"), fields.get("cert_file"), fields.get("key_file"))
