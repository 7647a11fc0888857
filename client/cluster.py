"""What the client knows of the cluster, and how it keeps that knowledge fresh.

``parse_bootstrap`` turns what the user passed into broker URLs; ``ClusterMetadata`` is
one answer of ``GET /v1/cluster`` (pure data, no IO); ``Cluster`` refreshes it from
whichever broker answers, one refresh at a time however many callers ask. The client
never computes owners itself: the brokers do, with the router's hashing, and say so in
``owners``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import BrokerUnreachable, ShoalApiError, ShoalError, UnknownPartition, UnknownTopic
from .http import BrokerClient

__all__ = ["Cluster", "ClusterMetadata", "backoff_seconds", "parse_bootstrap"]

log = logging.getLogger(__name__)

Bootstrap = str | os.PathLike | Iterable[str]


def parse_bootstrap(bootstrap: Bootstrap) -> list[str]:
    """Broker URLs from a URL, a comma-separated string of URLs, a list, or a cluster.yaml path.

    ``host:port`` without a scheme means ``http://host:port``. From a cluster.yaml only
    ``brokers[].url`` is read.

    Raises:
        ValueError: nothing usable was given; the message says what and where.
    """
    if isinstance(bootstrap, os.PathLike):
        return _urls_from_yaml(Path(bootstrap))
    if isinstance(bootstrap, str):
        text = bootstrap.strip()
        if text.endswith((".yaml", ".yml")) or (text and "://" not in text and Path(text).is_file()):
            return _urls_from_yaml(Path(text))
        items = [part for part in text.split(",") if part.strip()]
    else:
        try:
            items = list(bootstrap)
        except TypeError:
            raise ValueError(
                f"bootstrap must be a URL, a list of URLs or a cluster.yaml path, not {type(bootstrap).__name__}"
            ) from None
    if not items:
        raise ValueError("bootstrap is empty: give at least one broker URL or a cluster.yaml path")
    urls = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"bootstrap URLs must be strings, got {item!r}")
        url = _normalise_url(item, "bootstrap")
        if url not in urls:
            urls.append(url)
    return urls


def _normalise_url(raw: str, where: str) -> str:
    url = raw.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ValueError(f"{where}: {raw!r} is not a broker URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where}: {raw!r} is not a broker URL (want http://host:port)")
    return url


def _urls_from_yaml(path: Path) -> list[str]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read bootstrap file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    brokers = doc.get("brokers") if isinstance(doc, dict) else None
    if not isinstance(brokers, list) or not brokers:
        raise ValueError(f"{path}: brokers must be a non-empty list of {{id, url}}")
    urls = []
    for i, broker in enumerate(brokers):
        url = broker.get("url") if isinstance(broker, dict) else None
        if not isinstance(url, str):
            raise ValueError(f"{path}: brokers[{i}].url is missing or not a string")
        urls.append(_normalise_url(url, f"{path}: brokers[{i}].url"))
    return urls


@dataclass(frozen=True)
class ClusterMetadata:
    """One ``GET /v1/cluster`` answer, reduced to what clients route by.

    Attributes:
        cluster: the cluster's name.
        epoch: the topology's epoch; a refresh never installs an older one.
        brokers: broker id -> advertised URL.
        partitions: topic -> partition count.
        owners: topic -> owning broker id of partition 0, 1, ...
        max_batch_bytes: the largest batch frame brokers accept, None when unsaid.
    """

    cluster: str
    epoch: int
    brokers: dict[int, str]
    partitions: dict[str, int]
    owners: dict[str, tuple[int, ...]]
    max_batch_bytes: int | None = None

    @classmethod
    def from_json(cls, body: Any) -> "ClusterMetadata":
        """Parse an answer; raises ValueError when it is not the documented shape."""
        try:
            brokers = {int(b["id"]): _normalise_url(b["url"], "GET /v1/cluster") for b in body["brokers"]}
            partitions = {name: int(t["partitions"]) for name, t in body["topics"].items()}
            owners = {name: tuple(int(i) for i in ids) for name, ids in body["owners"].items()}
            settings = body.get("settings") or {}
            return cls(
                cluster=str(body.get("cluster", "")),
                epoch=int(body["epoch"]),
                brokers=brokers,
                partitions=partitions,
                owners=owners,
                max_batch_bytes=settings.get("max_batch_bytes"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"malformed GET /v1/cluster answer: {exc!r}") from None

    def owner_url(self, topic: str, partition: int) -> str | None:
        """URL of the broker owning ``topic/partition``, None when unknown here."""
        try:
            return self.brokers.get(self.owners[topic][partition])
        except (KeyError, IndexError):
            return None


class Cluster:
    """Keeps a current ``ClusterMetadata`` for a producer or consumer.

    ``refresh()`` asks the known brokers (then the bootstrap ones) in turn for
    ``GET /v1/cluster`` and installs the first answer whose epoch is not older than
    the installed one. Concurrent callers share one refresh, and refreshes are at least
    ``min_refresh_ms`` apart, so a burst of ``NOT_OWNER`` answers costs one round trip.
    Not thread-safe; one event loop.

    Args:
        bootstrap: see ``parse_bootstrap``.
        http: the session to ask through.
        min_refresh_ms: the shortest time between two refreshes.
    """

    def __init__(self, bootstrap: Bootstrap, http: BrokerClient, *, min_refresh_ms: int = 100):
        self.bootstrap = parse_bootstrap(bootstrap)
        self.metadata: ClusterMetadata | None = None
        self._http = http
        self._min_refresh = min_refresh_ms / 1000
        self._last_refresh = -1e9
        self._refreshing: asyncio.Future[ClusterMetadata] | None = None

    async def refresh(self, prefer: str | None = None) -> ClusterMetadata:
        """The current topology, freshly read.

        Args:
            prefer: a broker to ask first, such as the one that just answered
                ``NOT_OWNER`` with an epoch newer than ours.

        Raises:
            BrokerUnreachable: no broker answered.
        """
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh(prefer))
            self._refreshing.add_done_callback(_retrieve)
        return await asyncio.shield(self._refreshing)

    def refresh_soon(self, prefer: str | None = None) -> asyncio.Future[ClusterMetadata]:
        """Start a refresh in the background (a failure is logged, not raised)."""
        fut = asyncio.ensure_future(self.refresh(prefer))
        fut.add_done_callback(_log_failure)
        return fut

    async def close(self) -> None:
        """Cancel a refresh in progress (before the session it uses is closed)."""
        if self._refreshing is not None and not self._refreshing.done():
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)

    async def _refresh(self, prefer: str | None) -> ClusterMetadata:
        wait = self._last_refresh + self._min_refresh - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        candidates = list(self.metadata.brokers.values()) if self.metadata else []
        random.shuffle(candidates)  # spread refreshes; a dead broker is not always first
        candidates += [url for url in self.bootstrap if url not in candidates]
        if prefer:
            candidates = [prefer] + [url for url in candidates if url != prefer]
        failures = []
        refused: ShoalError | None = None  # an answer like 401 says more than "unreachable"
        try:
            for url in candidates:
                try:
                    fresh = ClusterMetadata.from_json(await self._http.cluster(url))
                except (ValueError, ShoalError) as exc:
                    failures.append(f"{url}: {exc}")
                    if isinstance(exc, ShoalApiError) and not exc.retriable and refused is None:
                        refused = exc
                    continue
                if self.metadata is not None and fresh.epoch < self.metadata.epoch:
                    log.debug("broker %s still has epoch %d < %d; asking another", url, fresh.epoch, self.metadata.epoch)
                    continue
                if self.metadata is None or fresh.epoch != self.metadata.epoch:
                    log.debug("topology of cluster %s at epoch %d from %s", fresh.cluster, fresh.epoch, url)
                self.metadata = fresh
                return fresh
        finally:
            self._last_refresh = time.monotonic()
        if self.metadata is not None and not failures:
            return self.metadata  # every answer was older than what we hold
        if refused is not None:
            raise refused
        raise BrokerUnreachable(", ".join(candidates), "; ".join(failures) or "no broker to ask")

    async def partitions(self, topic: str) -> int:
        """Partition count of ``topic``, refreshing once when it is not known yet.

        Raises:
            UnknownTopic: the cluster has no such topic.
        """
        meta = self.metadata
        n = meta.partitions.get(topic) if meta else None
        if n is None:
            meta = await self.refresh()
            n = meta.partitions.get(topic)
            if n is None:
                raise UnknownTopic(f"topic {topic!r} does not exist in cluster {meta.cluster!r}", topic=topic)
        return n

    async def check_partition(self, topic: str, partition: int) -> None:
        """Raise ``UnknownTopic`` / ``UnknownPartition`` unless ``topic/partition`` exists."""
        n = await self.partitions(topic)
        if not (isinstance(partition, int) and 0 <= partition < n):
            raise UnknownPartition(
                f"topic {topic!r} has partitions 0..{n - 1}, not {partition!r}",
                topic=topic, partition=partition, partitions=n,
            )


def backoff_seconds(attempt: int, base_ms: int, max_ms: int) -> float:
    """Exponential backoff with jitter: between half and all of ``base * 2**(attempt-1)``, capped."""
    ceiling = min(max_ms, base_ms * (1 << min(max(attempt, 1) - 1, 30))) / 1000
    return ceiling * (0.5 + random.random() / 2)


def _retrieve(fut: asyncio.Future) -> None:
    # Callers see the error through shield(); this only keeps asyncio from warning
    # when every caller was cancelled first.
    if not fut.cancelled():
        fut.exception()


def _log_failure(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("topology refresh failed: %s", fut.exception())
