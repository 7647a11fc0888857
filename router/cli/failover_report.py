"""What ``shoal cluster up`` says about a failover: where a dead broker's partitions went.

When a broker of a replicated cluster dies, the supervisor follows its partitions in
the running brokers' ``GET /v1/cluster`` (their mirror of etcd) and prints one line
once every partition it led has a new leader, or once the wait is long enough that
the rest must have none (their in-sync replicas are all down)::

    broker 2 is down: 6 partitions moved leader to 1 (2) and 3 (4) in 3.4s

and, after the broker is back, one line once it is in the ISR of every partition it
replicates again::

    broker 2 is in sync again: in the ISR of all its 10 partitions, 0.6s after it was back

Times are from the moment the supervisor saw the process exit (within its 0.2 s
tick), measured by polling: good to a quarter of a second. Leaders stay where they
moved. Pure bookkeeping: the supervisor does the polling (``LeaderWatch``).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.client.errors import ShoalError

from shoal.router.cli.session import AdminClient

TP = tuple[str, int]
POLL_S = 1.0  # how often leaders are read while nothing happens
POLL_FAILOVER_S = 0.25  # while a failover is followed
IN_SYNC_WAIT_S = 120.0  # a broker back for this long and still behind is not reported on


def _states(body: dict) -> dict[TP, dict]:
    return {
        (topic, p): state
        for topic, states in body.get("partitions", {}).items()
        for p, state in enumerate(states)
        if state is not None
    }


def _brokers(ids) -> str:
    ids = [str(i) for i in ids]
    return ids[0] if len(ids) == 1 else ", ".join(ids[:-1]) + " and " + ids[-1]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


@dataclass
class Failover:
    """One dead broker's partitions, followed until they have new leaders and it is back in sync."""

    broker: int
    since: float  # time.monotonic() when its exit was seen
    lease_ttl_s: float
    led: set[TP] | None  # the partitions it led (None: not read before it died)
    moved: bool = False
    back_at: float | None = None
    done: bool = False

    def progress(self, states: dict[TP, dict], now: float) -> str | None:
        """The line to print now, if any."""
        if self.led is None:
            self.led = {tp for tp, s in states.items() if s["leader"] == self.broker}
        if not self.moved:
            return self._moved(states, now)
        if self.back_at is None:
            return None
        mine = [tp for tp, s in states.items() if self.broker in s["replicas"]]
        if all(self.broker in states[tp]["isr"] for tp in mine):
            self.done = True
            return (
                f"broker {self.broker} is in sync again: in the ISR of all its {_plural(len(mine), 'partition')}, "
                f"{now - self.back_at:.1f}s after it was back"
            )
        if now - self.back_at > IN_SYNC_WAIT_S:
            self.done = True
        return None

    def _moved(self, states: dict[TP, dict], now: float) -> str | None:
        still = sorted(tp for tp in self.led if states.get(tp, {}).get("leader") == self.broker)
        # Leaders move one lease TTL after the death (plus etcd's expiry check); after
        # three TTLs and some, those left have no in-sync replica alive to take over.
        if still and now - self.since < 3 * self.lease_ttl_s + 5:
            return None
        self.moved = True
        to = Counter(states[tp]["leader"] for tp in self.led if tp in states and tp not in still)
        if not self.led:
            line = f"broker {self.broker} is down; it led no partitions"
        else:
            where = _brokers(f"{b} ({n})" for b, n in sorted(to.items()))
            line = f"broker {self.broker} is down: {_plural(sum(to.values()), 'partition')} moved leader"
            line += f" to {where} in {now - self.since:.1f}s" if to else ""
        if still:
            names = ", ".join(f"{t}/{p}" for t, p in still)
            line += f"; {_plural(len(still), 'partition')} still without a leader, no in-sync replica alive: {names}"
        return line


@dataclass
class LeaderWatch:
    """Reads the partition states from a live broker and reports failovers as they complete."""

    lease_ttl_s: float
    states: dict[TP, dict] = field(default_factory=dict)
    failovers: dict[int, Failover] = field(default_factory=dict)
    polled_at: float = 0.0

    def died(self, broker: int) -> None:
        led = {tp for tp, s in self.states.items() if s["leader"] == broker} if self.states else None
        self.failovers[broker] = Failover(broker, time.monotonic(), self.lease_ttl_s, led)

    def back(self, broker: int) -> None:
        failover = self.failovers.get(broker)
        if failover is not None:
            failover.back_at = time.monotonic()

    async def poll(self, api: AdminClient, urls: list[str], report: Callable[[str], None]) -> None:
        """Read the states (from the first of ``urls`` that answers) if it is time, and report."""
        now = time.monotonic()
        busy = any(not f.moved or f.back_at is not None for f in self.failovers.values())
        if now - self.polled_at < (POLL_FAILOVER_S if busy else POLL_S):
            return
        self.polled_at = now
        for url in urls:
            try:
                body = await api.cluster(url)
            except ShoalError:
                continue
            self.states = _states(body)
            break
        else:
            return
        for broker, failover in list(self.failovers.items()):
            line = failover.progress(self.states, now)
            if line is not None:
                report(line)
            if failover.done:
                del self.failovers[broker]


def admin_client() -> AdminClient:
    """The supervisor's client: ``$SHOAL_TOKEN`` when the cluster has ``auth:`` (without
    one, failovers are just not reported)."""
    return AdminClient(request_timeout_ms=1000, token=os.environ.get("SHOAL_TOKEN") or None)
