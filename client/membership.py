"""``GroupMembership``: one consumer's membership in a consumer group.

It joins the group at its coordinator (any broker redirects there with NOT_OWNER; in a
replicated cluster the coordinator moves with the leader of the group's offsets partition,
and the members follow the same way),
then heartbeats from a background task, so a consumer whose application is busy
between polls stays in the group. Each heartbeat reports the partitions the consumer
holds and gets back the ones it should hold: partitions that disappear from that set
are revoked (the consumer commits them and lets go, then heartbeats again at once so
the next member gets them quickly), partitions that appear are assigned.

Failure handling:

* the coordinator forgot the member (session timed out, coordinator restarted): every
  partition is lost (not revoked: a commit would be fenced anyway) and the consumer
  joins again;
* the coordinator cannot be reached for longer than the session timeout: the same,
  because the group has moved the partitions elsewhere by then;
* the application has not polled for ``max_poll_interval_ms``: the member leaves the
  group, releasing its partitions to the others, and joins again on the next poll.

A static member (``group_instance_id``) does not leave on close: restarted within the
session timeout, it gets its partitions back without a rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .cluster import Cluster, backoff_seconds
from .errors import BrokerUnreachable, NotOwner, ShoalError, UnknownMemberId
from .http import BrokerClient
from .structs import TopicPartition

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 30.0  # how long start() retries a join that fails with a retriable error

Listener = Callable[[set[TopicPartition]], Awaitable[None]]


def partition_map(tps: Iterable[TopicPartition]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for tp in sorted(tps):
        out.setdefault(tp.topic, []).append(tp.partition)
    return out


def from_partition_map(value: dict[str, list[int]]) -> set[TopicPartition]:
    return {TopicPartition(t, p) for t, ps in value.items() for p in ps}


class GroupMembership:
    """Keeps one consumer in ``group``. Runs on the consumer's event loop.

    Args:
        http, cluster: the consumer's session and topology.
        group: the group name.
        topics: the subscribed topics.
        on_revoked: awaited with partitions to let go of (commit them first).
        on_assigned: awaited with partitions newly handed to this consumer.
        on_lost: awaited with partitions taken away without a chance to commit.
        session_timeout_ms, assignor, group_instance_id, max_poll_interval_ms: see
            ``AsyncConsumer``.
    """

    def __init__(
        self,
        http: BrokerClient,
        cluster: Cluster,
        group: str,
        topics: Iterable[str],
        *,
        on_revoked: Listener,
        on_assigned: Listener,
        on_lost: Listener,
        session_timeout_ms: int = 10_000,
        assignor: str = "sticky",
        group_instance_id: str | None = None,
        max_poll_interval_ms: int = 300_000,
        retry_backoff_ms: int = 100,
    ):
        self._http = http
        self._cluster = cluster
        self.group = group
        self.topics = sorted(set(topics))
        self._on_revoked, self._on_assigned, self._on_lost = on_revoked, on_assigned, on_lost
        self.session_timeout_ms = session_timeout_ms
        self.assignor = assignor
        self.instance_id = group_instance_id
        self.max_poll_interval_ms = max_poll_interval_ms
        self._backoff_ms = retry_backoff_ms
        self.member_id: str | None = None
        self.generation: int | None = None
        self.assignment: set[TopicPartition] = set()
        self.coordinator_url: str | None = None
        self._turn = -1  # which broker _any_broker asks next
        self.last_heartbeat: float | None = None  # time.time() of the last answered heartbeat
        self.last_poll = time.monotonic()
        self._interval = session_timeout_ms / 3000
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._left_for_poll = False
        self._closing = False

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group and keep heartbeating until ``stop()``."""
        if self._task is None:
            attempt = 0
            deadline = time.monotonic() + JOIN_TIMEOUT_S
            while True:  # the coordinator may be moving or loading (503): retry a while
                try:
                    await self._join()
                    break
                except ShoalError as exc:
                    attempt += 1
                    if not exc.retriable or time.monotonic() > deadline:
                        raise
                    self.coordinator_url = None
                    await asyncio.sleep(backoff_seconds(attempt, self._backoff_ms, 2000))
            self._task = asyncio.create_task(self._run(), name=f"heartbeat-{self.group}")

    async def stop(self, *, leave: bool = True) -> None:
        """Stop heartbeating; leave the group at once unless this is a static member."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if leave and self.instance_id is None and self.member_id is not None:
            await self._leave()

    def polled(self) -> None:
        """The application asked for records: it is alive (max_poll_interval_ms)."""
        self.last_poll = time.monotonic()
        if self._left_for_poll:
            self._wake.set()

    def heartbeat_now(self) -> None:
        self._wake.set()

    def commit_fields(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "generation": self.generation}

    def health(self) -> dict[str, Any]:
        """What an application's health check wants to know about this consumer."""
        return {
            "group": self.group,
            "member_id": self.member_id,
            "generation": self.generation,
            "assignment": partition_map(self.assignment),
            "last_heartbeat": self.last_heartbeat,
            "seconds_since_poll": round(time.monotonic() - self.last_poll, 3),
            "in_group": self.member_id is not None and not self._left_for_poll,
        }

    # --- protocol -------------------------------------------------------------------------

    async def _call(self, method: str, path: str, body: dict | None = None) -> Any:
        """One call to the coordinator, following NOT_OWNER to the right broker; a broker
        that cannot be reached is left for the next one (the coordinator may have moved
        with a broker's death: the others name the new one)."""
        for attempt in range(3):
            url = self.coordinator_url or await self._any_broker()
            try:
                return await self._http.request_json(method, url, path, json_body=body)
            except NotOwner as exc:
                self.coordinator_url = exc.owner_url
            except BrokerUnreachable:
                self.coordinator_url = None
                if attempt == 2:
                    raise
        raise NotOwner(f"could not find the coordinator of group {self.group}")

    async def _any_broker(self) -> str:
        """The brokers in turn, so that a dead one is not asked again and again."""
        meta = self._cluster.metadata or await self._cluster.refresh()
        urls = list(meta.brokers.values())
        self._turn += 1
        return urls[self._turn % len(urls)]

    async def _join(self) -> None:
        body = {
            "topics": self.topics,
            "assignor": self.assignor,
            "session_timeout_ms": self.session_timeout_ms,
            "group_instance_id": self.instance_id,
            "member_id": self.member_id,
        }
        answer = await self._call("POST", f"/v1/groups/{self.group}/members", body)
        self.member_id = answer["member_id"]
        log.info("group %s: joined as %s (generation %d)", self.group, self.member_id, answer["generation"])
        await self._apply(answer)

    async def _leave(self) -> None:
        member, self.member_id = self.member_id, None
        try:
            await self._call("DELETE", f"/v1/groups/{self.group}/members/{member}")
        except ShoalError as exc:
            log.debug("group %s: leave of %s not confirmed: %s", self.group, member, exc)

    async def _apply(self, answer: dict) -> None:
        self.generation = answer["generation"]
        self.last_heartbeat = time.time()
        self._interval = answer["heartbeat_interval_ms"] / 1000
        target = from_partition_map(answer["assignment"])
        revoked = self.assignment - target
        if revoked:
            log.info("group %s: generation %d revokes %s", self.group, self.generation, sorted(map(str, revoked)))
            await self._on_revoked(revoked)
            self.assignment -= revoked
            self._interval = 0  # tell the coordinator at once, so the next member can start
        added = target - self.assignment
        if added:
            log.info("group %s: generation %d assigns %s", self.group, self.generation, sorted(map(str, added)))
            self.assignment |= added
            await self._on_assigned(added)

    async def _lose_everything(self, why: str) -> None:
        lost, self.assignment = self.assignment, set()
        self.member_id = None
        log.warning("group %s: %s; dropping %d partition(s) and joining again", self.group, why, len(lost))
        if lost:
            await self._on_lost(lost)

    async def _run(self) -> None:
        attempt = 0
        last_ok = time.monotonic()
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            idle = time.monotonic() - self.last_poll
            if not self._left_for_poll and idle * 1000 > self.max_poll_interval_ms:
                log.warning(
                    "group %s: no poll for %.1fs (max_poll_interval_ms=%d); leaving the group",
                    self.group, idle, self.max_poll_interval_ms,
                )
                revoked, self.assignment = self.assignment, set()
                if revoked:
                    await self._on_revoked(revoked)
                await self._leave()
                self._left_for_poll = True
                continue
            if self._left_for_poll:
                if idle * 1000 > self.max_poll_interval_ms:
                    self._interval = 1.0
                    continue
                self._left_for_poll = False
            try:
                if self.member_id is None:
                    await self._join()
                else:
                    answer = await self._call(
                        "POST",
                        f"/v1/groups/{self.group}/members/{self.member_id}/heartbeat",
                        {"owned": partition_map(self.assignment)},
                    )
                    await self._apply(answer)
                attempt = 0
                last_ok = time.monotonic()
            except UnknownMemberId:
                await self._lose_everything("the coordinator no longer knows this member")
                self._interval = 0
            except ShoalError as exc:
                attempt += 1
                self.coordinator_url = None  # find it again: it may have moved or restarted
                if (time.monotonic() - last_ok) * 1000 > self.session_timeout_ms:
                    await self._lose_everything(f"no heartbeat answered for a whole session ({exc})")
                self._interval = backoff_seconds(attempt, self._backoff_ms, 2000)
