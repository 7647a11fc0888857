"""Benchmarks: shoal side by side with Redis Streams and NATS JetStream (``python -m bench``)."""
