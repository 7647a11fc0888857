"""The reassignment throttle's token bucket: only replicas being added are limited."""

from __future__ import annotations

from shoal.broker.replication.throttle import Throttle
from shoal.client.structs import TopicPartition

TP = TopicPartition("orders", 0)


def test_only_added_replicas_are_throttled_and_an_empty_bucket_gives_nothing():
    throttle = Throttle(lambda tp, follower: follower == 4)
    assert throttle.budget(TP, 4, 1 << 20) == 1 << 20  # no rate: no limit
    throttle.set_rate(1000)
    assert throttle.budget(TP, 4, 1 << 20) == 1000  # one second's worth at most
    throttle.spent(TP, 4, 1500)  # a whole batch may overdraw the bucket
    assert throttle.budget(TP, 4, 1 << 20) == 0 and throttle.refill_s() > 0.4
    assert throttle.budget(TP, 2, 1 << 20) == 1 << 20  # an ISR follower is never held back
    throttle.spent(TP, 2, 10_000)
    assert throttle.sent == 1500
    throttle.set_rate(None)
    assert throttle.budget(TP, 4, 1 << 20) == 1 << 20 and throttle.refill_s() == 0
