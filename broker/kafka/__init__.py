"""The Kafka wire-protocol listener of a broker (``brokers[].kafka`` in cluster.yaml)."""

from shoal.broker.kafka.listener import KafkaListener

__all__ = ["KafkaListener"]
