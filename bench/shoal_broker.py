"""A single shoal broker for the benchmarks: ``python -m shoal.broker`` on a temp cluster.yaml."""

from __future__ import annotations

import sys
from collections.abc import Mapping

import yaml

from .procs import ServerProcess, free_port, http_get


class ShoalBroker(ServerProcess):
    """Broker 1 of a one-broker cluster whose topics are declared up front.

    Args:
        topics: topic name -> partition count.
        flush: the topics' flush policy (``always``, ``interval`` or ``never``).
        flush_interval_ms: the fsync period under ``interval``.
        segment_bytes: segment size (None: the topology default).
        kafka: also serve the Kafka protocol, on ``kafka_port``.
    """

    name = "shoal"

    def __init__(
        self,
        topics: Mapping[str, int],
        *,
        flush: str = "interval",
        flush_interval_ms: int = 1000,
        segment_bytes: int | None = None,
        kafka: bool = False,
        **kw,
    ) -> None:
        super().__init__(**kw)
        self.kafka_port = free_port() if kafka else None
        self.flush_interval_ms = flush_interval_ms
        defaults: dict = {"partitions": 1, "flush": flush, "flush_interval_ms": flush_interval_ms}
        if segment_bytes:
            defaults["segment_bytes"] = segment_bytes
        self.config_path = self.dir / "cluster.yaml"
        self.config_path.write_text(
            yaml.safe_dump(
                {
                    "cluster": "bench",
                    "epoch": 1,
                    "defaults": defaults,
                    "brokers": [{"id": 1, "url": self.url, "data_dir": str(self.dir / "data")}
                                | ({"kafka": f"127.0.0.1:{self.kafka_port}"} if kafka else {})],
                    "topics": {name: {"partitions": n} for name, n in topics.items()},
                },
                sort_keys=False,
            )
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self):
        return [sys.executable, "-m", "shoal.broker", "--config", str(self.config_path), "--id", "1",
                "--log-level", "warning"]  # fmt: skip

    def get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        return http_get(self.port, path, timeout)

    def is_ready(self) -> bool:
        return self.get("/v1/health")[0] == 200
