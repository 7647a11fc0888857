"""Prometheus metrics of one broker.

Counters are bumped once per request (never per record). Partition state (high
watermark, log start, size, segments) is read from the logs when /metrics is scraped,
so it costs nothing on the hot path; so is replication's (leaders, ISR, follower lag,
elections), from the broker's replica manager and its mirror of etcd. The names follow
Kafka's broker metrics (docs/operations.md lists the pairs).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from shoal.broker.replication.reassignment import ReassignmentCollector


class _PartitionCollector:
    def __init__(self, broker):
        self._broker = broker

    def collect(self):
        labels = ["topic", "partition"]
        hw = GaugeMetricFamily(
            "shoal_partition_high_watermark", "Offset below which records are readable (all in-sync replicas have them)", labels=labels
        )
        end = GaugeMetricFamily("shoal_partition_log_end_offset", "Next offset to be written to this replica", labels=labels)
        start = GaugeMetricFamily("shoal_partition_log_start_offset", "First offset still stored", labels=labels)
        size = GaugeMetricFamily("shoal_partition_size_bytes", "Bytes stored in segment files", labels=labels)
        segments = GaugeMetricFamily("shoal_partition_segments", "Segment files", labels=labels)
        lingers = CounterMetricFamily(
            "shoal_partition_write_lingers", "Write groups that waited linger_ms for more appends (flush: always)", labels=labels
        )
        for tp in self._broker.logs.partitions():
            plog = self._broker.logs.get(tp.topic, tp.partition)
            if plog is None:
                continue
            key = [tp.topic, str(tp.partition)]
            hw.add_metric(key, plog.high_watermark)
            end.add_metric(key, plog.log_end_offset)
            start.add_metric(key, plog.log_start_offset)
            size.add_metric(key, plog.size_bytes)
            segments.add_metric(key, plog.segment_count)
            lingers.add_metric(key, plog.stats.lingers)
        epoch = GaugeMetricFamily("shoal_topology_epoch", "Epoch of the installed topology")
        epoch.add_metric([], self._broker.topology.epoch)
        return [hw, end, start, size, segments, lingers, epoch]


class _ReplicationCollector:
    """Replication as seen by this broker; nothing while the cluster is not replicated."""

    def __init__(self, broker):
        self._broker = broker

    def collect(self):
        replicas, leadership = self._broker.replicas, self._broker.leadership
        if replicas is None or leadership is None:
            return []
        me = replicas.me
        led = [(tp, s) for tp, s in list(replicas.membership.states.items()) if s.leader == me and tp in replicas.leading]
        leaders = GaugeMetricFamily("shoal_leader_partitions", "Partitions this broker leads (Kafka: LeaderCount)")
        leaders.add_metric([], len(led))
        hosted = GaugeMetricFamily("shoal_replica_partitions", "Partitions this broker holds a replica of (Kafka: PartitionCount)")
        hosted.add_metric([], sum(me in s.replicas for s in list(replicas.membership.states.values())))
        under = GaugeMetricFamily(
            "shoal_under_replicated_partitions",
            "Partitions led here whose ISR is smaller than their replicas (Kafka: UnderReplicatedPartitions)",
        )
        under.add_metric([], sum(len(s.isr) < len(s.replicas) for _, s in led))
        below_min = GaugeMetricFamily(
            "shoal_under_min_isr_partitions",
            "Partitions led here whose ISR is below min_insync_replicas: acks=all appends fail (Kafka: UnderMinIsrPartitionCount)",
        )
        topics = self._broker.topology.topics
        below_min.add_metric([], sum(tp.topic in topics and len(s.isr) < topics[tp.topic].min_insync_replicas for tp, s in led))
        shrinks = CounterMetricFamily("shoal_isr_shrinks", "Followers removed from an ISR by this broker (Kafka: IsrShrinksPerSec)")
        shrinks.add_metric([], replicas.isr_shrinks)
        expands = CounterMetricFamily("shoal_isr_expands", "Followers added back to an ISR by this broker (Kafka: IsrExpandsPerSec)")
        expands.add_metric([], replicas.isr_expands)
        fetches = CounterMetricFamily(
            "shoal_replica_fetches", "Follower fetches answered by this broker, by transport (stream or http)", labels=["transport"]
        )
        for transport, count in replicas.fetches.items():
            fetches.add_metric([transport], count)
        streams = GaugeMetricFamily("shoal_replica_streams", "Followers' fetch streams (WebSockets) open at this broker")
        streams.add_metric([], replicas.streams)
        applied = CounterMetricFamily(
            "shoal_partition_states_applied",
            "Partition states the replica manager applied to the local replicas (one per state change, all at start)",
        )
        applied.add_metric([], replicas.states_applied)
        elections = CounterMetricFamily(
            "shoal_leader_elections_won", "Partitions this broker took over as leader after their leader died"
        )
        elections.add_metric([], leadership.elections)
        labels = ["topic", "partition", "follower"]
        lag = GaugeMetricFamily(
            "shoal_follower_lag_records",
            "Records a follower is behind this leader's log end, as of its last fetch (Kafka: ReplicaFetcherManager MaxLag)",
            labels=labels,
        )
        worst = 0
        for tp, state in led:
            lead = replicas.leading.get(tp)
            if lead is None:
                continue
            for follower, leo in sorted(lead.follower_leo.items()):
                behind = max(0, lead.plog.log_end_offset - leo)
                worst = max(worst, behind)
                lag.add_metric([tp.topic, str(tp.partition), str(follower)], behind)
        max_lag = GaugeMetricFamily("shoal_follower_max_lag_records", "The largest shoal_follower_lag_records of this broker")
        max_lag.add_metric([], worst)
        return [leaders, hosted, under, below_min, shrinks, expands, fetches, streams, applied, elections, lag, max_lag]


class BrokerMetrics:
    """The broker's registry; one instance per application."""

    def __init__(self, broker):
        self.registry = CollectorRegistry()
        self.records_in = Counter("shoal_records_appended", "Records appended", ["topic"], registry=self.registry)
        self.bytes_in = Counter("shoal_bytes_appended", "Batch bytes appended", ["topic"], registry=self.registry)
        self.bytes_out = Counter("shoal_bytes_fetched", "Batch bytes served by fetches", ["topic"], registry=self.registry)
        self.fetches = Counter("shoal_fetch_requests", "Fetch requests served", ["topic"], registry=self.registry)
        self.registry.register(_PartitionCollector(broker))
        self.registry.register(_ReplicationCollector(broker))
        self.registry.register(ReassignmentCollector(broker))

    def appended(self, topic: str, records: int, nbytes: int) -> None:
        self.records_in.labels(topic).inc(records)
        self.bytes_in.labels(topic).inc(nbytes)

    def fetched(self, topic: str, nbytes: int) -> None:
        self.fetches.labels(topic).inc()
        self.bytes_out.labels(topic).inc(nbytes)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
