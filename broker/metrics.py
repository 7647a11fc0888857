"""Prometheus metrics of one broker.

Counters are bumped once per request (never per record). Partition state (high
watermark, log start, size, segments) is read from the logs when /metrics is scraped,
so it costs nothing on the hot path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class _PartitionCollector:
    def __init__(self, broker):
        self._broker = broker

    def collect(self):
        labels = ["topic", "partition"]
        hw = GaugeMetricFamily("shoal_partition_high_watermark", "Next offset to be written", labels=labels)
        start = GaugeMetricFamily("shoal_partition_log_start_offset", "First offset still stored", labels=labels)
        size = GaugeMetricFamily("shoal_partition_size_bytes", "Bytes stored in segment files", labels=labels)
        segments = GaugeMetricFamily("shoal_partition_segments", "Segment files", labels=labels)
        for tp in self._broker.logs.partitions():
            plog = self._broker.logs.get(tp.topic, tp.partition)
            if plog is None:
                continue
            key = [tp.topic, str(tp.partition)]
            hw.add_metric(key, plog.high_watermark)
            start.add_metric(key, plog.log_start_offset)
            size.add_metric(key, plog.size_bytes)
            segments.add_metric(key, plog.segment_count)
        epoch = GaugeMetricFamily("shoal_topology_epoch", "Epoch of the installed topology")
        epoch.add_metric([], self._broker.topology.epoch)
        return [hw, start, size, segments, epoch]


class BrokerMetrics:
    """The broker's registry; one instance per application."""

    def __init__(self, broker):
        self.registry = CollectorRegistry()
        self.records_in = Counter("shoal_records_appended", "Records appended", ["topic"], registry=self.registry)
        self.bytes_in = Counter("shoal_bytes_appended", "Batch bytes appended", ["topic"], registry=self.registry)
        self.bytes_out = Counter("shoal_bytes_fetched", "Batch bytes served by fetches", ["topic"], registry=self.registry)
        self.fetches = Counter("shoal_fetch_requests", "Fetch requests served", ["topic"], registry=self.registry)
        self.registry.register(_PartitionCollector(broker))

    def appended(self, topic: str, records: int, nbytes: int) -> None:
        self.records_in.labels(topic).inc(records)
        self.bytes_in.labels(topic).inc(nbytes)

    def fetched(self, topic: str, nbytes: int) -> None:
        self.fetches.labels(topic).inc()
        self.bytes_out.labels(topic).inc(nbytes)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
