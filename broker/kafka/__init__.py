"""The Kafka wire-protocol listener of a broker (``brokers[].kafka`` in cluster.yaml).

``listener.KafkaListener`` serves it; ``records`` keeps Kafka batches and shoal frames
readable from both protocols.
"""
