"""A replicated shoal cluster for the benchmarks: one etcd and N brokers on loopback.

Every process is a ``ServerProcess`` (killed with the bench, its temp dir removed on
stop). The brokers share one cluster.yaml with a ``metadata:`` section naming the
etcd, so topics declared with ``replication_factor`` above 1 elect leaders there.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import yaml

from .procs import ServerError, ServerProcess, free_port, http_get, which


class Etcd(ServerProcess):
    """One etcd member (Debian's ``etcd-server``), with a short heartbeat so leases of 2 s work."""

    name = "etcd"

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.peer_port = free_port()
        self.binary = which("etcd")
        if self.binary is None:
            raise ServerError("etcd not installed: apt-get install etcd-server")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self):
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [self.binary, "--name", "bench", "--data-dir", str(self.dir / "data"),
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"bench={peer}", "--log-level", "warn", "--logger", "zap",
                "--heartbeat-interval", "10", "--election-timeout", "100"]  # fmt: skip

    def is_ready(self) -> bool:
        status, body = http_get(self.port, "/health")
        return status == 200 and json.loads(body).get("health") == "true"


class ClusterBroker(ServerProcess):
    """Broker ``broker_id`` of the cluster.yaml at ``config_path`` (written once every port is known)."""

    name = "shoal"
    ready_timeout = 120.0  # 10,000 partitions at factor 3 take a while to load

    def __init__(self, broker_id: int, config_path: Path, **kw) -> None:
        super().__init__(**kw)
        self.broker_id = broker_id
        self.config_path = config_path
        self.kafka_port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / f"broker-{self.broker_id}.out"

    def command(self):
        return [sys.executable, "-m", "shoal.broker", "--config", str(self.config_path), "--id", str(self.broker_id),
                "--log-level", "warning"]  # fmt: skip

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        return http_get(self.port, path, timeout)

    def is_ready(self) -> bool:
        return self.get("/v1/health")[0] == 200


class ShoalCluster:
    """etcd and ``n`` brokers; ``topics``: name -> topic settings (partitions, replication_factor, ...).

    Use as a context manager: ``__enter__`` starts etcd, then every broker, and waits
    until each partition has a leader; ``__exit__`` stops them all and removes the files.
    """

    def __init__(
        self,
        n: int,
        topics: Mapping[str, Mapping],
        *,
        lease_ttl_ms: int = 2000,
        kafka: bool = False,
        flush: str = "interval",
        flush_interval_ms: int = 1000,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="shoal-bench-cluster-"))
        self.topics = {name: dict(spec) for name, spec in topics.items()}
        self.etcd = Etcd(workdir=self._sub("etcd"))
        config = self.dir / "cluster.yaml"
        self.brokers = {i: ClusterBroker(i, config, workdir=self._sub(f"broker-{i}")) for i in range(1, n + 1)}
        config.write_text(yaml.safe_dump({
            "cluster": "bench",
            "epoch": 1,
            "metadata": {"etcd": [self.etcd.url], "lease_ttl_ms": lease_ttl_ms},
            "defaults": {"partitions": 1, "flush": flush, "flush_interval_ms": flush_interval_ms},
            "brokers": [{"id": i, "url": b.url, "data_dir": str(b.dir / "data")}
                        | ({"kafka": f"127.0.0.1:{b.kafka_port}"} if kafka else {}) for i, b in self.brokers.items()],
            "topics": self.topics,
        }, sort_keys=False))  # fmt: skip

    def _sub(self, name: str) -> Path:
        path = self.dir / name
        path.mkdir()
        return path

    @property
    def urls(self) -> list[str]:
        return [b.url for b in self.brokers.values()]

    def __enter__(self) -> ShoalCluster:
        try:
            self.etcd.start()
            # All at once, as `shoal cluster up` does: a broker that came up alone would
            # find its peers dead and take their partitions over.
            for broker in self.brokers.values():
                broker.spawn()
            for broker in self.brokers.values():
                broker.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        for broker in self.brokers.values():
            broker.stop()
        self.etcd.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def states(self, via: int | None = None) -> dict[str, list[dict]]:
        """Every partition's state (leader, leader_epoch, replicas, isr) as a live broker sees it."""
        for i, broker in self.brokers.items():
            if (via is None or i == via) and broker.alive():
                status, body = broker.get("/v1/cluster", timeout=30)
                if status == 200:
                    return json.loads(body).get("partitions", {})
        return {}

    def leader(self, topic: str, partition: int = 0) -> int | None:
        states = self.states().get(topic) or []
        return states[partition].get("leader") if partition < len(states) else None

    def wait_settled(self, timeout: float = 300) -> float:
        """Wait until every partition of every topic has a live leader and a full ISR; the seconds it took."""
        live = {i for i, b in self.brokers.items() if b.alive()}

        def settled() -> bool:
            states = self.states()
            for name, spec in self.topics.items():
                parts = states.get(name) or []
                if len(parts) != spec.get("partitions", 1):
                    return False
                want = min(spec.get("replication_factor", 1), len(live))
                if any(not s or s.get("leader") not in live or len(s.get("isr") or ()) < want for s in parts):
                    return False
            return True

        start = time.monotonic()
        if poll(lambda: True if settled() else None, timeout=timeout, interval=2) is None:
            raise ServerError(f"not every partition had a live leader and a full ISR after {timeout:.0f}s")
        return time.monotonic() - start


def poll(check, *, timeout: float, interval: float = 0.05):
    """``check()`` until it returns something other than None; None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:
            value = None
        if value is not None:
            return value
        time.sleep(interval)
    return None
