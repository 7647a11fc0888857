"""Helpers shared by the Kafka client tests."""

from __future__ import annotations

import time


def poll_messages(consumer, n: int, timeout: float = 60.0) -> list:
    """Up to ``n`` messages from a confluent-kafka consumer, failing on any error message."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None:
            assert msg.error() is None, msg.error()
            got.append(msg)
    return got
