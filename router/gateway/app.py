"""The gateway: API v1 for every partition, for clients that do not route themselves.

It holds no data. A partition request is forwarded to the partition's owner with its
body and headers as they came, over one pooled keep-alive session; the answer is
passed back as it is (stored frames stay byte for byte). When an owner does not answer,
the caller gets 503 BROKER_UNAVAILABLE naming the broker; when an owner says NOT_OWNER
(the topology moved on, or another broker leads now), the gateway retries once at the
owner it names and re-reads ``GET /v1/cluster``.

In a replicated cluster the owner is the partition's current leader, from the brokers'
``GET /v1/cluster`` (their mirror of etcd); the gateway re-reads it every REFRESH_S,
and at once (at most every MIN_REFRESH_S) when an owner does not answer or names
another. Its own ``GET /v1/cluster`` is that answer plus the under-replicated and
offline partitions (``router.cluster_health``).

Beyond the broker API it serves ``POST /v1/topics/{topic}/records``, which spreads JSON
records over partitions with Kafka's key partitioner, and cluster-wide group views.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
from collections import defaultdict

import aiohttp
from aiohttp import web

from shoal.client.errors import (
    BrokerUnavailable,
    InvalidRequest,
    ShoalApiError,
    ShoalError,
    StaleEpoch,
)
from shoal.client.names import check_name
from shoal.client.partitioner import partition_for_key
from shoal.router.cluster_health import partition_health
from shoal.router.hashing import group_coordinator
from shoal.router.console import add_console_routes
from shoal.router.server.auth import authenticate
from shoal.router.server.middlewares import MAX_BODY, LoadLimits, problem_errors, request_context
from shoal.router.server.openapi import build_openapi
from shoal.router.server.params import json_body, path_partition, topology_change
from shoal.router.server.tls import client_context, serving_context
from shoal.router.topology import Topology, TopologyError

log = logging.getLogger(__name__)

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "te", "upgrade"}
REFRESH_S = 10.0
MIN_REFRESH_S = 0.5


class Gateway:
    """Routes requests to partition owners. Use from one event loop."""

    def __init__(self, topology: Topology, *, timeout_s: float = 35.0, token: str | None = None):
        self.topology = topology
        self.timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=3)
        self.session: aiohttp.ClientSession | None = None
        self._rr = itertools.count(random.randrange(1 << 16))
        # The gateway's own calls carry its token; forwarded requests carry the caller's.
        self._headers = {"Authorization": f"Bearer {token}"} if token else None
        self._ssl = client_context(topology.tls.ca_file if topology.tls else None)
        self.view: dict | None = None  # the last GET /v1/cluster of a broker at the topology's epoch
        self.up: set[int] = set()  # the brokers that answered it
        self.refreshed_at = 0.0
        self._refreshing: asyncio.Task | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=512, limit_per_host=128, keepalive_timeout=30, ssl=self._ssl if self._ssl else True
            ),
            timeout=self.timeout,
            auto_decompress=False,
            headers=self._headers,
        )
        await self.refresh()

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def refresh(self) -> None:
        """Adopt the newest topology any broker reports (brokers may be ahead of the file),
        and the partition leaders a broker at that epoch reports."""
        self.refreshed_at = asyncio.get_running_loop().time()  # loop time

        async def ask(url: str) -> dict | None:
            try:
                async with self.session.get(url + "/v1/cluster", timeout=aiohttp.ClientTimeout(total=3)) as resp:
                    return await resp.json() if resp.status == 200 else None
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                return None

        brokers = self.topology.brokers
        answers = await asyncio.gather(*(ask(b.url) for b in brokers))
        for broker, data in zip(brokers, answers):
            if data is not None and data.get("epoch", -1) > self.topology.epoch:
                try:
                    self.topology = Topology.from_dict(data, source=f"{broker.url}/v1/cluster")
                except TopologyError:
                    continue
                log.info("gateway adopted topology epoch %d from broker %d", self.topology.epoch, broker.id)
        self.up = {b.id for b, data in zip(brokers, answers) if data is not None}
        self.view = next((data for data in answers if data is not None and data.get("epoch") == self.topology.epoch), None)

    def refresh_soon(self) -> None:
        """Re-read the leaders in the background, at most every MIN_REFRESH_S."""
        if self._refreshing is not None and not self._refreshing.done():
            return
        if asyncio.get_running_loop().time() - self.refreshed_at >= MIN_REFRESH_S:
            self._refreshing = asyncio.create_task(self.refresh())

    async def forward(self, request: web.Request, broker_id: int, path_qs: str, body: bytes | None) -> web.Response:
        """Send the request to one broker and answer with what it answered."""
        broker = self.topology.broker(broker_id)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            async with self.session.request(request.method, broker.url + path_qs, data=body, headers=headers) as resp:
                payload = await resp.read()
                out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP}
                return web.Response(status=resp.status, body=payload, headers=out_headers)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self.refresh_soon()  # a dead leader: its partitions get new ones
            raise BrokerUnavailable(
                f"broker {broker_id} at {broker.url} did not answer: {type(exc).__name__} {exc}".strip(),
                broker_id=broker_id,
            ) from None

    async def to_owner(self, request: web.Request, topic: str, partition: int) -> web.Response:
        body = await request.read() if request.body_exists else None
        owner = self._owner(topic, partition)
        resp = await self.forward(request, owner, request.path_qs, body)
        if resp.status in (421, 503):
            self.refresh_soon()
        if resp.status == 421:
            named = _named_owner(resp.body)
            if named is None or named not in self.topology.broker_ids:
                await self.refresh()
                named = self._owner(topic, partition)
            if named != owner:
                resp = await self.forward(request, named, request.path_qs, body)
        return resp

    def _owner(self, topic: str, partition: int) -> int:
        """The partition's owner: its leader in a replicated cluster, else its rendezvous owner."""
        check_name(topic, "topic")
        static = self.topology.owner(topic, partition).id
        owners = (self.view or {}).get("owners", {}).get(topic) if self.view is not None else None
        leader = owners[partition] if owners and partition < len(owners) else None
        return leader if leader in self.topology.broker_ids else static

    async def json_call(
        self, method: str, broker_id: int, path: str, body=None, *, topology=None, headers=None
    ) -> dict:
        """Call one broker with the gateway's token, or with ``headers`` given (a caller's)."""
        broker = (topology or self.topology).broker(broker_id)
        try:
            async with self.session.request(method, broker.url + path, json=body, headers=headers) as resp:
                data = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise ShoalError.from_problem(data, status=resp.status)
                return data
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            raise BrokerUnavailable(f"broker {broker_id} at {broker.url} did not answer: {exc}", broker_id=broker_id) from None

    def next_partition(self, partitions: int) -> int:
        return next(self._rr) % partitions


GATEWAY = web.AppKey("gateway", Gateway)


def _named_owner(body: bytes) -> int | None:
    """The ``owner_id`` of a NOT_OWNER problem body, if it names one."""
    try:
        owner = json.loads(body).get("owner_id")
    except (ValueError, AttributeError):
        return None
    return owner if isinstance(owner, int) else None


async def partition_request(request: web.Request) -> web.Response:
    topic, partition = path_partition(request)
    return await request.app[GATEWAY].to_owner(request, topic, partition)


async def coordinator_request(request: web.Request) -> web.Response:
    """Group membership calls go to the group's coordinator."""
    gw = request.app[GATEWAY]
    group = check_name(request.match_info["group"], "group")
    coordinator = group_coordinator(group, gw.topology.broker_ids)
    body = await request.read() if request.body_exists else None
    return await gw.forward(request, coordinator, request.path_qs, body)


async def topic_records(request: web.Request) -> web.Response:
    """Spread JSON records over partitions: by key (murmur2), else round-robin per request."""
    gw = request.app[GATEWAY]
    topic = check_name(request.match_info["topic"], "topic")
    config = gw.topology.topic(topic)
    payload = await json_body(request)
    records = payload.get("records") if isinstance(payload, dict) else None
    if not isinstance(records, list) or not records:
        raise InvalidRequest('body must be {"records": [...]} with at least one record', field="records")
    keyless = gw.next_partition(config.partitions)
    groups: dict[int, list[tuple[int, dict]]] = defaultdict(list)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise InvalidRequest(f"records[{i}] must be an object", field=f"records[{i}]")
        rec = dict(rec)
        explicit = rec.pop("partition", None)
        key = rec.get("key")
        if explicit is not None:
            if isinstance(explicit, bool) or not isinstance(explicit, int) or not 0 <= explicit < config.partitions:
                raise InvalidRequest(f"records[{i}].partition must be 0..{config.partitions - 1}", field=f"records[{i}].partition")
            p = explicit
        elif isinstance(key, str):
            p = partition_for_key(key.encode(), config.partitions)
        else:
            p = keyless
        groups[p].append((i, rec))

    async def send(p: int, items: list[tuple[int, dict]]):
        owner = gw._owner(topic, p)
        path = f"/v1/topics/{topic}/partitions/{p}/records"
        return p, items, await gw.json_call("POST", owner, path, {"records": [r for _, r in items]})

    results = await asyncio.gather(*(send(p, items) for p, items in groups.items()), return_exceptions=True)
    offsets: list[dict | None] = [None] * len(records)
    errors = []
    for result in results:
        if isinstance(result, BaseException):
            if not isinstance(result, ShoalApiError):
                raise result
            errors.append(result)
            continue
        p, items, ack = result
        for n, (i, _) in enumerate(items):
            offsets[i] = {"partition": p, "offset": ack["base_offset"] + n}
    if errors and all(o is None for o in offsets):
        raise errors[0]
    body = {"topic": topic, "offsets": offsets}
    if errors:
        body["errors"] = [e.to_problem() for e in errors]
    return web.json_response(body, status=200 if not errors else 207)


async def list_groups(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    views, unavailable = await _answering_brokers(gw, "/v1/groups")
    merged: dict[str, list] = defaultdict(list)
    for view in views:
        for group in view.get("groups", []):
            merged[group["group"]].extend(group["partitions"])
    groups = [_group(g, rows) for g, rows in sorted(merged.items())]
    return web.json_response({"groups": groups, "unavailable_brokers": unavailable})


async def describe_group(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    group = check_name(request.match_info["group"], "group")
    views, unavailable = await _answering_brokers(gw, f"/v1/groups/{group}")
    body = _group(group, [row for view in views for row in view.get("partitions", [])])
    return web.json_response({**body, "unavailable_brokers": unavailable})


async def delete_group(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    group = check_name(request.match_info["group"], "group")
    await _all_brokers(gw, f"/v1/groups/{group}", method="DELETE")
    return web.json_response({"group": group, "deleted": True})


def _group(group: str, rows: list[dict]) -> dict:
    rows = sorted(rows, key=lambda r: (r["topic"], r["partition"]))
    lag = sum(r["lag"] or 0 for r in rows)
    return {"group": group, "partitions": rows, "lag": lag}


async def _all_brokers(gw: Gateway, path: str, method: str = "GET") -> list[dict]:
    """One call per broker; a broker that is down fails the whole call with 503."""
    return list(await asyncio.gather(*(gw.json_call(method, b.id, path) for b in gw.topology.brokers)))


async def _answering_brokers(gw: Gateway, path: str) -> tuple[list[dict], list[int]]:
    """One GET per broker: the answers of those that answered, and the ids of those that
    did not (503 BROKER_UNAVAILABLE only when none answered)."""
    brokers = gw.topology.brokers
    results = await asyncio.gather(*(gw.json_call("GET", b.id, path) for b in brokers), return_exceptions=True)
    views, unavailable = [], []
    for broker, result in zip(brokers, results):
        if isinstance(result, BrokerUnavailable):
            log.warning("broker %d left out of %s: %s", broker.id, path, result.detail)
            unavailable.append(broker.id)
        elif isinstance(result, BaseException):
            raise result
        else:
            views.append(result)
    if not views and unavailable:
        raise BrokerUnavailable(f"no broker answered {path}", broker_id=unavailable[0])
    return views, unavailable


async def get_cluster(request: web.Request) -> web.Response:
    """The topology; in a replicated cluster also each partition's leader, epoch, replicas
    and ISR (as a broker mirrors them from etcd, re-read now), and the under-replicated
    and offline partitions."""
    gw = request.app[GATEWAY]
    if asyncio.get_running_loop().time() - gw.refreshed_at >= MIN_REFRESH_S:
        await gw.refresh()
    if gw.view is None or "partitions" not in gw.view:
        return web.json_response(gw.topology.to_dict())
    return web.json_response({**gw.view, **partition_health(gw.view, gw.up)})


async def put_cluster(request: web.Request) -> web.Response:
    """Install a topology on every broker (admin); the gateway adopts it when all accept."""
    gw = request.app[GATEWAY]
    change = await topology_change(request)
    new, body = change.topology, change.to_dict()
    for broker in new.brokers:
        try:
            await gw.json_call("PUT", broker.id, "/v1/cluster", body, topology=new)
        except StaleEpoch as exc:
            if exc.epoch != new.epoch:  # a broker already at this epoch is fine
                raise
    gw.topology = new
    return web.json_response(new.to_dict())


async def health(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return web.json_response({"status": "ok", "role": "gateway", "epoch": gw.topology.epoch})


def create_gateway_app(topology: Topology, *, token: str | None = None, console: bool = True) -> web.Application:
    """The gateway application; topology refreshes run while it is up.

    ``console`` serves the read-only web console at ``/console/`` (router.console).

    ``token`` authenticates the gateway's own calls to brokers (topology refreshes,
    cluster-wide group views, keyed produce) when the cluster has ``auth:``. Callers
    are checked here against the same ``auth:`` section, and a request forwarded to
    an owner carries the caller's own token, which the owner checks again.
    """
    limit = topology.settings.max_request_bytes
    gw = Gateway(topology, timeout_s=topology.settings.max_wait_ms / 1000 + 5, token=token)
    limits = LoadLimits(lambda: gw.topology.settings)
    middlewares = [request_context, problem_errors, limits.admit]
    if topology.auth is not None:
        middlewares.append(authenticate(topology.auth))
    middlewares.append(limits.receive)
    app = web.Application(middlewares=middlewares, client_max_size=limit)
    app[GATEWAY] = gw
    app[MAX_BODY] = limit
    openapi = build_openapi("shoal gateway", gateway=True)

    async def serve_openapi(request: web.Request) -> web.Response:
        return web.json_response(openapi)

    async def lifecycle(app: web.Application):
        await gw.start()

        async def refresher():
            while True:
                await asyncio.sleep(REFRESH_S)
                await gw.refresh()

        task = asyncio.create_task(refresher())
        yield
        task.cancel()
        await gw.stop()

    app.cleanup_ctx.append(lifecycle)
    part = "/v1/topics/{topic}/partitions/{partition}"
    app.router.add_route("*", part + "/records", partition_request)
    app.router.add_get(part + "/offsets", partition_request)
    app.router.add_route("*", "/v1/groups/{group}/topics/{topic}/partitions/{partition}/offset", partition_request)
    app.router.add_post("/v1/topics/{topic}/records", topic_records)
    app.router.add_route("*", "/v1/groups/{group}/members", coordinator_request)
    app.router.add_route("*", "/v1/groups/{group}/members/{member}", coordinator_request)
    app.router.add_post("/v1/groups/{group}/members/{member}/heartbeat", coordinator_request)
    app.router.add_post("/v1/groups/{group}/fence", coordinator_request)
    app.router.add_get("/v1/groups", list_groups)
    app.router.add_get("/v1/groups/{group}", describe_group)
    app.router.add_delete("/v1/groups/{group}", delete_group)
    app.router.add_get("/v1/cluster", get_cluster)
    app.router.add_put("/v1/cluster", put_cluster)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/openapi.json", serve_openapi)
    if console:
        add_console_routes(app, gw)
    return app


def run_gateway(
    topology: Topology,
    host: str,
    port: int,
    *,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    token: str | None = None,
    console: bool = True,
) -> None:
    """Serve the gateway (and its console, unless ``console`` is False) until SIGTERM/SIGINT.

    HTTPS with ``tls_cert``/``tls_key``, else with the ``tls:`` section if any.
    ``token`` (default ``$SHOAL_TOKEN``) is the gateway's own, for its calls to brokers.

    Raises:
        TlsError: the certificate or key cannot be loaded.
    """
    ssl_context = serving_context(topology.tls, tls_cert, tls_key)
    token = token or os.environ.get("SHOAL_TOKEN") or None
    log.info("gateway listening on %s://%s:%d for cluster %s (%d brokers)",
             "https" if ssl_context else "http", host, port, topology.cluster, len(topology.brokers))
    web.run_app(
        create_gateway_app(topology, token=token, console=console), host=host, port=port, ssl_context=ssl_context,
        print=None, access_log=None, shutdown_timeout=5,
        handler_cancellation=True,  # a client that went away cancels its forwarded call
    )


if __name__ == "__main__":  # python -m shoal.router.gateway.app ARGS == shoal router start ARGS
    import sys

    from shoal.router.cli.main import main

    main(["router", "start", *sys.argv[1:]])
