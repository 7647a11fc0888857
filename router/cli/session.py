"""The CLI's connection to a running cluster: bootstrap URLs in, owners from the brokers.

The CLI reads only the broker URLs from cluster.yaml; what the cluster is running
(epoch, topics, owners) it learns from ``GET /v1/cluster``, taking the highest epoch
any broker reports, and it sends each partition's calls straight to its owner.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import aiohttp

from shoal.client.errors import BrokerUnreachable, NotOwner, ShoalError
from shoal.client.http import BrokerClient

from shoal.router.cli.output import CliError
from shoal.router.server.tls import client_context
from shoal.router.topology import Topology, TopologyError

log = logging.getLogger(__name__)

T = TypeVar("T")


class AdminClient(BrokerClient):
    """``BrokerClient`` plus the admin calls of API v1 the CLI needs."""

    async def health(self, url: str) -> dict[str, Any]:
        """``GET /v1/health``: ``{"status", "broker_id", "epoch"}``."""
        return await self.request_json("GET", url, "/v1/health")

    async def install(self, url: str, topology: dict[str, Any]) -> dict[str, Any]:
        """``PUT /v1/cluster``: install a newer topology; answers the installed one."""
        return await self.request_json("PUT", url, "/v1/cluster", json_body=topology)

    async def metrics(self, url: str) -> str:
        """``GET /metrics``: the broker's Prometheus text."""
        body, _ = await self._call("GET", url, "/metrics")
        return body.decode()

    async def hand_off(self, url: str, topic: str, partition: int, to: int | None = None) -> dict[str, Any]:
        """``POST .../hand-off`` at the partition's leader: a controlled leader change."""
        path = f"/v1/topics/{topic}/partitions/{partition}/hand-off"
        return await self.request_json("POST", url, path, json_body={} if to is None else {"to": to}, timeout=30)

    async def groups(self, url: str) -> list[dict[str, Any]]:
        """``GET /v1/groups``: the groups with committed offsets on this broker."""
        return (await self.request_json("GET", url, "/v1/groups"))["groups"]

    async def members(self, url: str, group: str) -> dict[str, Any]:
        """``GET /v1/groups/{group}/members`` at the group's coordinator: state and members."""
        return await self.request_json("GET", url, f"/v1/groups/{group}/members")

    async def group(self, url: str, group: str) -> dict[str, Any]:
        """``GET /v1/groups/{group}``: the group's partitions on this broker."""
        return await self.request_json("GET", url, f"/v1/groups/{group}")


@dataclass(frozen=True)
class BrokerState:
    """What one bootstrap URL answered: its health and topology, or why it did not."""

    url: str
    broker_id: int | None = None
    epoch: int | None = None
    topology: Topology | None = None
    error: str | None = None
    leaders: dict[str, list[int]] | None = None  # a replicated cluster's partition leaders


class ClusterSession:
    """One CLI command's view of the cluster. Use from one event loop, as ``async with``.

    Args:
        urls: the bootstrap broker URLs (those of cluster.yaml).
        timeout_s: how long one request may take.

    With ``auth:`` on, the token in ``$SHOAL_TOKEN`` goes with every call; for https
    brokers signed by a private CA, ``$SHOAL_CA_FILE`` names the CA to trust.
    """

    def __init__(self, urls: list[str], *, timeout_s: float = 5.0):
        self.urls = list(dict.fromkeys(urls))
        self.api = AdminClient(
            request_timeout_ms=int(timeout_s * 1000),
            token=os.environ.get("SHOAL_TOKEN") or None,
            ssl_context=client_context(os.environ.get("SHOAL_CA_FILE")),
        )
        self._topology: Topology | None = None
        self._leaders: dict[str, list[int]] = {}

    async def __aenter__(self) -> ClusterSession:
        await self.api.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.api.close()

    async def _probe(self, url: str) -> BrokerState:
        try:
            health, cluster = await asyncio.gather(self.api.health(url), self.api.cluster(url))
            topology = Topology.from_dict(cluster, source=f"GET {url}/v1/cluster")
        except (ShoalError, TopologyError) as exc:
            return BrokerState(url, error=reason(exc))
        leaders = cluster.get("owners") if "partitions" in cluster else None  # the owners are the leaders
        return BrokerState(url, health.get("broker_id"), health.get("epoch"), topology, leaders=leaders)

    async def survey(self, urls: list[str] | None = None) -> list[BrokerState]:
        """Ask every bootstrap broker (or ``urls``) at once for its health and topology."""
        return list(await asyncio.gather(*(self._probe(url) for url in urls or self.urls)))

    async def topology(self, *, refresh: bool = False) -> Topology:
        """The running topology: the highest epoch any bootstrap broker reports.

        Raises:
            CliError: no broker answered.
        """
        if self._topology is None or refresh:
            states = await self.survey()
            self._topology = newest(states)
            self._leaders = next(
                (s.leaders for s in states if s.leaders is not None and s.epoch == self._topology.epoch), {}
            )
        return self._topology

    async def on_owner(self, topic: str, partition: int, call: Callable[[str], Awaitable[T]]) -> T:
        """``call(owner_url)`` for the partition's owner, following one NOT_OWNER redirect."""
        topology = await self.topology()
        owner = topology.owner(topic, partition).id
        leaders = self._leaders.get(topic) or []
        if partition < len(leaders) and leaders[partition] in topology.broker_ids:
            owner = leaders[partition]
        try:
            return await call(topology.broker(owner).url)
        except NotOwner as exc:
            log.warning("%s/%d moved to broker %s; retrying there", topic, partition, exc.owner_id)
            await self.topology(refresh=True)
            return await call(exc.owner_url)


def reason(exc: Exception) -> str:
    """Why a broker did not answer, briefly: "connection refused" rather than aiohttp's
    full connector message."""
    cause = exc.__cause__
    if isinstance(exc, BrokerUnreachable) and isinstance(cause, aiohttp.ClientConnectorError) and cause.os_error.errno:
        return os.strerror(cause.os_error.errno).lower()
    return str(exc)


def newest(states: list[BrokerState]) -> Topology:
    """The topology of highest epoch among ``states``.

    Raises:
        CliError: none of them answered.
    """
    answered = [s.topology for s in states if s.topology is not None]
    if not answered:
        reasons = ", ".join(f"{s.url} {s.error or 'no answer'}" for s in states[:3])
        more = f" and {len(states) - 3} more" if len(states) > 3 else ""
        raise CliError(f"no broker answered ({reasons}{more}); is the cluster up? (shoal cluster up)")
    return max(answered, key=lambda t: t.epoch)
